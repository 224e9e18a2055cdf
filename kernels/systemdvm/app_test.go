//go:build systemdvm

package systemdvm

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
)

// app is the application the units' bpfsup supervises:
//
//	systemdvm.test app -state DIR [-ready-after D] [-fail]
//
// It records LISTEN_FDNAMES in DIR/fds, puts dropPort into every
// drop_ports map it is handed, exits 1 at once with -fail, sends READY=1
// and STATUS= to NOTIFY_SOCKET after -ready-after (with notify = "child"),
// appends each SIGTERM it gets to DIR/signals and exits 0 half a second
// after the first, so that a second one would be seen.
func app(args []string) int {
	fs := flag.NewFlagSet("app", flag.ContinueOnError)
	state := fs.String("state", "", "directory for what the cases read back")
	readyAfter := fs.Duration("ready-after", -1, "send READY=1 after this long (negative: never)")
	failNow := fs.Bool("fail", false, "exit 1 at once")
	if err := fs.Parse(args); err != nil || *state == "" {
		return 2
	}
	if err := os.MkdirAll(*state, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	terms := make(chan os.Signal, 4)
	signal.Notify(terms, syscall.SIGTERM)
	names := os.Getenv("LISTEN_FDNAMES")
	fds := filepath.Join(*state, "fds")
	if os.WriteFile(fds+".tmp", []byte(os.Getenv("LISTEN_FDS")+" "+names+"\n"), 0o644) == nil {
		_ = os.Rename(fds+".tmp", fds)
	}
	for i, name := range strings.Split(names, ":") {
		if !strings.HasSuffix(name, "/maps/drop_ports") {
			continue
		}
		m, err := ebpf.NewMapFromFD(3 + i)
		if err != nil {
			fmt.Fprintf(os.Stderr, "app: fd %d (%s): %v\n", 3+i, name, err)
			return 1
		}
		if err := m.Put(uint16(dropPort), uint8(1)); err != nil {
			fmt.Fprintf(os.Stderr, "app: put into %s: %v\n", name, err)
			return 1
		}
	}
	if *failNow {
		fmt.Fprintln(os.Stderr, "app: failing, as asked")
		return 1
	}
	if *readyAfter >= 0 {
		time.Sleep(*readyAfter)
		stamp := strconv.FormatInt(time.Now().UnixNano(), 10)
		_ = os.WriteFile(filepath.Join(*state, "ready"), []byte(stamp), 0o644)
		if err := notify("READY=1\nSTATUS=app ready"); err != nil {
			fmt.Fprintf(os.Stderr, "app: notify: %v\n", err)
			return 1
		}
	}
	<-terms
	f, err := os.OpenFile(filepath.Join(*state, "signals"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		fmt.Fprintln(f, "TERM")
	}
	deadline := time.After(500 * time.Millisecond)
	for {
		select {
		case <-terms:
			if f != nil {
				fmt.Fprintln(f, "TERM")
			}
		case <-deadline:
			return 0
		}
	}
}

// notify sends msg to NOTIFY_SOCKET, as sd_notify(3) does.
func notify(msg string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return fmt.Errorf("NOTIFY_SOCKET is not set")
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(msg))
	return err
}
