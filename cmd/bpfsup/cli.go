package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bpfsup/bpfsup/supervisor/spawn"

	"github.com/bpfsup/bpfsup/control"

	"github.com/bpfsup/bpfsup/converge"
	"github.com/bpfsup/bpfsup/status"

	"github.com/spf13/cobra"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/internal/crash"
	"github.com/bpfsup/bpfsup/pinstore"
	"github.com/bpfsup/bpfsup/supervisor"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func bpfsupVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "dev"
}

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// loggedError has been logged already, as a JSON line with --log-format
// json: main must not print it again as text.
type loggedError struct{ error }

func (l loggedError) Unwrap() error { return l.error }

// execute runs the command line and returns bpfsup's exit status.
func execute(args []string) (int, error) {
	code := 0
	root := &cobra.Command{
		Use:           "bpfsup",
		Short:         "A supervisor for crash-safe BPF programs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(runCmd(&code), checkCmd(), statusCmd(), downCmd(), reloadCmd(), inspectCmd(), debugCmd(), versionCmd())
	root.SetArgs(args)
	err := root.Execute()
	if err != nil && strings.HasPrefix(err.Error(), "unknown command") {
		err = usageError{err}
	}
	return code, err
}

type storeFlags struct {
	pinRoot, stateDir string
}

func (s *storeFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&s.pinRoot, "pin-root", pinstore.DefaultPinRoot, "pin root on bpffs")
	c.Flags().StringVar(&s.stateDir, "state-dir", pinstore.DefaultStateDir, "state directory (locks, manifests, sockets)")
}

func (s *storeFlags) store() pinstore.Store {
	return pinstore.Store{Root: s.pinRoot, StateDir: s.stateDir}
}

func newLogger(format string) (*slog.Logger, error) {
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(os.Stderr, nil)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, nil)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format %q: must be text or json", format)}
}

// cutPlace cuts the place off an -a hook, "tcx/ingress:eth0,before=fw/x":
// the first of ",first", ",last", ",before=" and ",after=" starts it.
func cutPlace(hook string) (string, config.Attach, error) {
	at := -1
	for _, p := range []string{",first", ",last", ",before=", ",after="} {
		if i := strings.Index(hook, p); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	if at < 0 {
		return hook, config.Attach{}, nil
	}
	place, err := config.ParsePlace(hook[at+1:])
	return hook[:at], place, err
}

// withSigning gives every object the run's trusted keys and whether a
// signature is required.
func withSigning(objs []config.Object, keys []string, require bool) []config.Object {
	for i := range objs {
		objs[i].TrustedKeys, objs[i].RequireSignature = keys, require
	}
	return objs
}

// applyFlags adds -a and --map-access to the objects.
func applyFlags(objs []config.Object, attaches, mapAccess []string) ([]config.Object, error) {
	for _, a := range attaches {
		progPart, hook, ok := strings.Cut(a, "@")
		if !ok || progPart == "" || hook == "" {
			return nil, fmt.Errorf("-a %q: want [OBJECT/]PROG@HOOK[:TARGET][,first|,last|,before=X|,after=X]", a)
		}
		hook, place, err := cutPlace(hook)
		if err != nil {
			return nil, fmt.Errorf("-a %q: %w", a, err)
		}
		i, prog, err := findObject(objs, progPart, func(o config.Object, name string) bool {
			return objectHasProgram(o.Path, name)
		}, "program")
		if err != nil {
			return nil, fmt.Errorf("-a %q: %w", a, err)
		}
		place.Program, place.Hook = prog, hook
		objs[i].Attach = append(objs[i].Attach, place)
	}
	for _, m := range mapAccess {
		mapPart, access, ok := strings.Cut(m, "=")
		if !ok || mapPart == "" {
			return nil, fmt.Errorf("--map-access %q: want [OBJECT/]MAP=rw|ro|wo|none", m)
		}
		i, name, err := findObject(objs, mapPart, func(o config.Object, name string) bool {
			return objectHasMap(o.Path, name)
		}, "map")
		if err != nil {
			return nil, fmt.Errorf("--map-access %q: %w", m, err)
		}
		if objs[i].Maps == nil {
			objs[i].Maps = map[string]config.Map{}
		}
		mc := objs[i].Maps[name]
		if mc.Access, err = config.ParseAccess(access); err != nil {
			return nil, fmt.Errorf("--map-access %q: %w", m, err)
		}
		objs[i].Maps[name] = mc
	}
	return objs, nil
}

// findObject resolves "[OBJECT/]NAME" to the index of the one object that has
// NAME.
func findObject(objs []config.Object, ref string, has func(config.Object, string) bool, what string) (int, string, error) {
	objName, name, qualified := strings.Cut(ref, "/")
	if !qualified {
		name, objName = objName, ""
	}
	if len(objs) == 0 {
		return 0, "", errors.New("no object given (-o OBJECT)")
	}
	if !qualified && len(objs) == 1 {
		// Whatever the object has, the name is its: the install says
		// so when it has not. Reading its ELF here would parse it on
		// every start, adopting too.
		return 0, name, nil
	}
	var found []int
	for i, o := range objs {
		n := o.Name
		if n == "" {
			n = pinstore.ObjectName(o.Path)
		}
		if objName != "" {
			if n == objName {
				return i, name, nil
			}
			continue
		}
		if has(o, name) {
			found = append(found, i)
		}
	}
	switch {
	case objName != "":
		return 0, "", fmt.Errorf("no object named %q", objName)
	case len(found) == 1:
		return found[0], name, nil
	case len(found) == 0 && len(objs) == 1:
		// Let the install say what the object has.
		return 0, name, nil
	case len(found) == 0:
		return 0, "", fmt.Errorf("%s %q is in none of the objects", what, name)
	default:
		return 0, "", fmt.Errorf("%s %q is in several objects; write OBJECT/%s", what, name, name)
	}
}

func lookupCredential(userName, groupName string) (*spawn.Credential, error) {
	cred := &spawn.Credential{Groups: []uint32{}}
	if userName != "" {
		u, err := user.Lookup(userName)
		if err != nil {
			if _, nerr := strconv.Atoi(userName); nerr == nil {
				u, err = user.LookupId(userName)
			}
		}
		var uid, gid string
		if err == nil {
			uid, gid = u.Uid, u.Gid
		} else if ids, gerr := getent("passwd", userName); gerr == nil {
			uid, gid, err = ids[2], ids[3], nil
		}
		if err != nil {
			return nil, fmt.Errorf("--user %q: %w", userName, err)
		}
		u32, _ := strconv.ParseUint(uid, 10, 32)
		g32, _ := strconv.ParseUint(gid, 10, 32)
		cred.UID, cred.GID = uint32(u32), uint32(g32)
	}
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			if _, nerr := strconv.Atoi(groupName); nerr == nil {
				g, err = user.LookupGroupId(groupName)
			}
		}
		var gid string
		if err == nil {
			gid = g.Gid
		} else if ids, gerr := getent("group", groupName); gerr == nil {
			gid, err = ids[2], nil
		}
		if err != nil {
			return nil, fmt.Errorf("--group %q: %w", groupName, err)
		}
		g32, _ := strconv.ParseUint(gid, 10, 32)
		cred.GID = uint32(g32)
	}
	return cred, nil
}

// getent asks the C library's name services (getent(1)) for a passwd or
// group entry and returns its fields. bpfsup is built without cgo, so
// os/user reads /etc/passwd and /etc/group only; users that come from NSS
// modules (LDAP, systemd's DynamicUser=) are found here.
func getent(db, key string) ([]string, error) {
	out, err := exec.Command("getent", db, key).Output()
	if err != nil {
		return nil, err
	}
	fields := strings.Split(strings.TrimSpace(string(out)), ":")
	if len(fields) < 4 {
		return nil, fmt.Errorf("getent %s %s: %q is no %s entry", db, key, out, db)
	}
	return fields, nil
}

// inheritedFiles takes the fds bpfsup itself received by socket activation.
func inheritedFiles() ([]handoff.NamedFile, error) {
	l, err := handoff.Decode(os.Environ(), os.Getpid())
	if errors.Is(err, handoff.ErrNoHandoff) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	files := make([]handoff.NamedFile, l.N)
	for i := range files {
		fd := handoff.FirstFD + i
		files[i] = handoff.NamedFile{Name: l.Names[i], File: os.NewFile(uintptr(fd), l.Names[i])}
		// Ours to pass on as ExtraFiles, not to leak otherwise.
		_ = closeOnExec(fd)
	}
	for _, v := range []string{handoff.EnvListenFDs, handoff.EnvListenPID, handoff.EnvListenFDNames, handoff.EnvListenPIDFDID} {
		os.Unsetenv(v)
	}
	return files, nil
}

func statusCmd() *cobra.Command {
	var sf storeFlags
	var asJSON, ready bool
	c := &cobra.Command{
		Use:   "status [--pin-root DIR] [--state-dir DIR] [--json | --ready] [OBJECT...]",
		Short: "Show objects, maps, programs and links, from the pins and the kernel",
		Long: `Show objects, maps, programs and links, read from the pins, the kernel and
bpfsup's manifests, whether a supervisor runs or not. Anything that does not
add up is listed as a problem: a link that runs another program than the one
bpfsup installed, or sits on no configured hook, a pin bpfsup did not make,
debris of a crash.

--ready prints nothing on success and exits 0 only when every object is
healthy (every link attached where the configuration says and running the
program bpfsup installed, no problems) and a supervisor runs it with its
application ready: a readiness probe. Otherwise it says why and exits 1.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := status.ReadStatus(sf.store(), args...)
			if err != nil {
				return err
			}
			switch {
			case ready:
				return st.Ready()
			case asJSON:
				return st.WriteJSON(os.Stdout)
			}
			return st.Render(os.Stdout)
		},
	}
	sf.add(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (schema in docs/status-schema.md)")
	c.Flags().BoolVar(&ready, "ready", false, "exit 0 only when every object is healthy and its supervisor's application is ready")
	c.MarkFlagsMutuallyExclusive("json", "ready")
	return c
}

func downCmd() *cobra.Command {
	var sf storeFlags
	c := &cobra.Command{
		Use:   "down [--pin-root DIR] [--state-dir DIR] [OBJECT...]",
		Short: "Detach and unpin what bpfsup installed (every object when none is named), and nothing else",
		Long: `Detach and unpin what bpfsup installed for the objects named, or for every
object under the pin root when none is named. Only what an object's manifest
in the state directory records as bpfsup's is removed:
  - pins under links/, programs/ and maps/ holding the ids the manifest
    records (unpinning a link detaches its program; a link under a recorded
    name that runs a recorded program is bpfsup's too: a crash kept an
    install from recording it), and maps at pin paths of their own that
    bpfsup made and no other object's manifest uses;
  - pins under staging/ holding recorded ids (debris of a crashed upgrade);
  - links/, programs/, maps/, staging/ and the object's directory, each only
    when it is then empty;
  - once every recorded pin is gone, in the state directory: OBJECT.json (the
    manifest), OBJECT.lock, and the manifest's temporary files that kills
    left (.OBJECT.json.tmp, .OBJECT.json-DIGITS).
Everything else is left alone and listed: another tool's pins beside
bpfsup's, a pin at a recorded name holding another id, a directory no
manifest records, a map bpfsup adopted at a pin path. A pin root that is not
on bpffs is refused and nothing is removed. Exits 1 when something named is
not bpfsup's, a supervisor holds an object, or a removal failed.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := converge.Down(sf.store(), args)
			fmt.Print(rep.String())
			return err
		},
	}
	sf.add(c)
	return c
}

func reloadCmd() *cobra.Command {
	var sf storeFlags
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "reload [--pin-root DIR] [--state-dir DIR]",
		Short: "Ask the running supervisor to upgrade its objects, and print the result",
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return fmt.Errorf("--timeout %s: must be more than 0", timeout)
			}
			store := sf.store()
			pids, err := supervisorPIDs(store)
			if err != nil {
				return err
			}
			if len(pids) == 0 {
				return fmt.Errorf("no supervisor is running for %s (state in %s)", store.RootDir(), store.StateDirectory())
			}
			var errs []error
			for _, pid := range pids {
				if state, _ := pinstore.ProcessState(pid); state == 'T' || state == 't' {
					errs = append(errs, fmt.Errorf("supervisor %d is stopped (SIGSTOP, or a debugger): it cannot answer until it is continued (kill -CONT %d); no reload asked", pid, pid))
					continue
				}
				reply, err := control.Request(control.Socket(store.StateDirectory(), pid), "reload", timeout)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					why := "busy, or hung"
					if state, _ := pinstore.ProcessState(pid); state == 'T' || state == 't' {
						why = "stopped (SIGSTOP, or a debugger)"
					}
					errs = append(errs, fmt.Errorf("supervisor %d did not answer within %s (it is %s); it may still make the reload: see bpfsup status, or give a longer --timeout", pid, timeout, why))
					continue
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("supervisor %d: %w", pid, err))
					continue
				}
				if !reply.OK {
					errs = append(errs, fmt.Errorf("supervisor %d: %s", pid, reply.Error))
					continue
				}
				fmt.Printf("supervisor %d: reloaded in %s\n", pid, reply.Took)
				if reply.Reload != nil {
					fmt.Println(reply.Reload)
				}
			}
			return errors.Join(errs...)
		},
	}
	sf.add(c)
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the result (the verifier may take a while on large programs)")
	return c
}

// supervisorPIDs finds the supervisors managing objects under the store:
// the holders of the lock files of the state directory whose manifests name
// the store's pin root, and of the pin directories under it (which are
// there even when the state directory was removed, and the lock files are
// there when bpffs was unmounted).
func supervisorPIDs(store pinstore.Store) ([]int, error) {
	names, err := store.Objects()
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	var pids []int
	add := func(pid int, ok bool) {
		if ok && !seen[pid] {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	for _, n := range names {
		add(pinstore.LockHolder(store.LockPath(n)))
		add(pinstore.LockHolder(store.ObjectDir(n)))
	}
	locks, _ := filepath.Glob(filepath.Join(store.StateDirectory(), "*.lock"))
	for _, l := range locks {
		n := strings.TrimSuffix(filepath.Base(l), ".lock")
		if m, err := store.ReadManifest(n); err == nil && m != nil {
			add(pinstore.LockHolder(l))
		}
	}
	sort.Ints(pids)
	return pids, nil
}

func debugCmd() *cobra.Command {
	c := &cobra.Command{Use: "debug", Short: "Tools for testing bpfsup itself", Hidden: true}
	c.AddCommand(&cobra.Command{
		Use:   "reexec-protocol",
		Short: "Print what this build takes over from the program before a re-exec (SIGUSR2)",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Println(supervisor.ReexecProtocol)
		},
	})
	c.AddCommand(&cobra.Command{
		Use:   "crash-points",
		Short: "List the steps at which " + crash.EnvVar + " can make bpfsup kill itself (tests only)",
		Run: func(cmd *cobra.Command, args []string) {
			for _, p := range crash.Points() {
				fmt.Println(p)
			}
		},
	})
	return c
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print bpfsup's version",
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Println(bpfsupVersion())
		},
	}
}
