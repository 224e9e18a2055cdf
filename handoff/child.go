package handoff

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// NamedFile is one handed fd and its name.
type NamedFile struct {
	Name string
	File *os.File
}

var (
	filesOnce sync.Once
	files     []NamedFile
	filesErr  error
)

// Files returns every fd handed to this process, in order, with its name. The
// first call takes the fds over (marking them close-on-exec, so they do not
// leak into the process's own children) and removes the protocol's variables
// from the environment; later calls return the same files.
func Files() ([]NamedFile, error) {
	filesOnce.Do(func() {
		var l Listen
		l, filesErr = Decode(os.Environ(), os.Getpid())
		if filesErr != nil {
			return
		}
		for i := 0; i < l.N; i++ {
			fd := FirstFD + i
			unix.CloseOnExec(fd)
			files = append(files, NamedFile{Name: l.Names[i], File: os.NewFile(uintptr(fd), l.Names[i])})
		}
		os.Unsetenv(EnvListenFDs)
		os.Unsetenv(EnvListenPID)
		os.Unsetenv(EnvListenFDNames)
		os.Unsetenv(EnvListenPIDFDID)
	})
	return files, filesErr
}

// PinRoot is the pin root of the supervisor that started this process.
func PinRoot() string { return os.Getenv(EnvPinRoot) }

// lookup finds the fd named name: either its full name
// ("fw/maps/counters") or, when exactly one fd of the kind has it, its short
// name ("counters").
func lookup(kind, name string) (int, error) {
	fs, err := Files()
	if err != nil {
		return -1, err
	}
	var found []NamedFile
	for _, f := range fs {
		if f.Name == name {
			return int(f.File.Fd()), nil
		}
		obj, rest, ok := strings.Cut(f.Name, "/")
		if ok && obj != "" && rest == kind+"/"+name {
			found = append(found, f)
		}
	}
	switch len(found) {
	case 1:
		return int(found[0].File.Fd()), nil
	case 0:
		var names []string
		for _, f := range fs {
			names = append(names, f.Name)
		}
		return -1, fmt.Errorf("no %s named %q handed to this process (have: %s)", strings.TrimSuffix(kind, "s"), name, strings.Join(names, ", "))
	default:
		var names []string
		for _, f := range found {
			names = append(names, f.Name)
		}
		return -1, fmt.Errorf("%q is ambiguous: %s; use the full name", name, strings.Join(names, ", "))
	}
}

func dup(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup fd %d: %w", fd, err)
	}
	return nfd, nil
}

// Map returns the handed map called name: its short name when one object has
// it, or its full name "<object>/maps/<map>". The caller owns the returned
// map and should close it.
func Map(name string) (*ebpf.Map, error) {
	fd, err := lookup("maps", name)
	if err != nil {
		return nil, err
	}
	nfd, err := dup(fd)
	if err != nil {
		return nil, err
	}
	m, err := ebpf.NewMapFromFD(nfd)
	if err != nil {
		unix.Close(nfd)
		return nil, fmt.Errorf("map %s: %w", name, err)
	}
	return m, nil
}

// Program returns the handed program called name (short or full name).
func Program(name string) (*ebpf.Program, error) {
	fd, err := lookup("programs", name)
	if err != nil {
		return nil, err
	}
	nfd, err := dup(fd)
	if err != nil {
		return nil, err
	}
	p, err := ebpf.NewProgramFromFD(nfd)
	if err != nil {
		unix.Close(nfd)
		return nil, fmt.Errorf("program %s: %w", name, err)
	}
	return p, nil
}

// Link returns the handed link called name (short or full name).
func Link(name string) (link.Link, error) {
	fd, err := lookup("links", name)
	if err != nil {
		return nil, err
	}
	nfd, err := dup(fd)
	if err != nil {
		return nil, err
	}
	l, err := link.NewFromFD(nfd)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	return l, nil
}
