// Package config is bpfsup's configuration: the TOML file (File), the
// objects it installs (Object, with their attachments, maps and programs),
// and the modes of the run (Access, RestartMode, OnUpgrade, Notify,
// NotifyAccess), each typed and parsed once, where it is read, with errors
// that name the key and say what it takes. Unknown keys, empty strings,
// durations that are negative or out of range are errors: a misspelt key
// silently ignored is a firewall silently open.
//
// It holds no fds and keeps nothing across a restart.
package config
