// Command gohello does nothing: `make bench` times it from fork to exit as
// the start-up floor of any Go program on the machine, bpfsup's included.
package main

func main() {}
