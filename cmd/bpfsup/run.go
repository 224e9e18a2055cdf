package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/fdstore"
	"github.com/bpfsup/bpfsup/supervisor"
	"github.com/bpfsup/bpfsup/supervisor/spawn"
)

// runFlags are bpfsup run's flags; a flag given on the command line wins
// over the configuration file.
type runFlags struct {
	sf                                              storeFlags
	configPath, netns, restart, userName, groupName string
	notify, notifyAccess, logFormat, metricsAddr    string
	onUpgrade, execHelper                           string
	objects, attaches, mapAccess, trustedKeys       []string
	restartDelay, restartMaxDelay, stableAfter      time.Duration
	startLimitInterval, stopTimeout                 time.Duration
	startLimit                                      int
	watch, force, fdStore, pins, programStats       bool
	requireSignature, enforceOrder                  bool
}

func (f *runFlags) add(c *cobra.Command) {
	def := supervisor.DefaultRestartPolicy()
	fl := c.Flags()
	fl.StringVarP(&f.configPath, "config", "c", "", "TOML configuration file")
	fl.StringArrayVarP(&f.objects, "object", "o", nil, "BPF ELF object to install (repeatable)")
	fl.StringArrayVarP(&f.attaches, "attach", "a", nil, "attach a program: [OBJECT/]PROG@HOOK[:TARGET][,first|,last|,before=X|,after=X] (repeatable)")
	f.sf.add(c)
	fl.StringVar(&f.netns, "netns", "", "network namespace (path) of network hooks' interfaces")
	fl.StringVar(&f.restart, "restart", string(def.Mode), "restart policy: always, on-failure or never")
	fl.DurationVar(&f.restartDelay, "restart-delay", def.Delay, "first restart delay; doubles on every restart")
	fl.DurationVar(&f.restartMaxDelay, "restart-max-delay", def.MaxDelay, "longest restart delay")
	fl.DurationVar(&f.stableAfter, "stable-after", def.StableAfter, "a child that ran this long resets the back-off")
	fl.IntVar(&f.startLimit, "start-limit", def.StartLimit, "starts allowed within --start-limit-interval (0: no limit)")
	fl.DurationVar(&f.startLimitInterval, "start-limit-interval", def.StartLimitInterval, "window of the start limit")
	fl.DurationVar(&f.stopTimeout, "stop-timeout", 10*time.Second, "time between the stop signal and SIGKILL")
	fl.StringVar(&f.userName, "user", "", "run the child as this user (name or uid)")
	fl.StringVar(&f.groupName, "group", "", "run the child with this group (name or gid); the user's group by default")
	fl.StringArrayVar(&f.mapAccess, "map-access", nil, "hand a map to the child as [OBJECT/]MAP=rw|ro|wo|none (repeatable)")
	fl.StringVar(&f.notify, "notify", "", "child: systemd READY=1 waits for the child's own READY=1")
	fl.StringVar(&f.notifyAccess, "notify-access", string(config.NotifyAccessMain), "with --notify=child, whose messages count: main (the child alone) or all (and its descendants)")
	fl.StringVar(&f.execHelper, "exec-helper", "", "what starts the child and sets its LISTEN_PID: native (a 9 KB program bpfsup carries, run from a memfd; the default on x86-64), shell (/bin/sh; the default elsewhere) or bpfsup (bpfsup itself)")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fl.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on HOST:PORT")
	fl.StringVar(&f.onUpgrade, "on-upgrade", config.UpgradeRestart, "child on upgrade: restart, none or signal:NAME")
	fl.BoolVar(&f.watch, "watch", false, "reload when an object file or the config changes")
	fl.BoolVar(&f.force, "force", false, "replace foreign pins found at bpfsup's paths (make-before-break)")
	fl.BoolVar(&f.enforceOrder, "enforce-order", false, "move links on tcx and netkit hooks back to their configured place when another program took it (make-before-break)")
	fl.BoolVar(&f.fdStore, "fd-store", false, "keep every map, program and link in systemd's fd store too (FileDescriptorStoreMax=)")
	fl.StringArrayVar(&f.trustedKeys, "trusted-key", nil, "file of SSH public keys an object's signature (OBJECT.sig, ssh-keygen -Y sign -n bpfsup) must be by (repeatable)")
	fl.BoolVar(&f.requireSignature, "require-signature", false, "refuse an object that has no signature")
	fl.BoolVar(&f.programStats, "program-stats", false, "have the kernel count each program's runs and run time while bpfsup runs (BPF_ENABLE_STATS)")
	fl.BoolVar(&f.pins, "pins", true, "pin on the system's bpffs; --pins=false (with --fd-store) keeps the objects in the fd store alone")
}

// merge takes what the file says where no flag was given.
func (f *runFlags) merge(file *config.File, fl *pflag.FlagSet) {
	str := func(flag, fromFile string, v *string) {
		if !fl.Changed(flag) && fromFile != "" {
			*v = fromFile
		}
	}
	dur := func(flag string, fromFile *config.Duration, v *time.Duration) {
		if !fl.Changed(flag) && fromFile != nil {
			*v = fromFile.Duration
		}
	}
	str("pin-root", file.PinRoot, &f.sf.pinRoot)
	str("state-dir", file.StateDir, &f.sf.stateDir)
	str("netns", file.Netns, &f.netns)
	str("restart", string(file.Restart), &f.restart)
	str("user", file.User, &f.userName)
	str("group", file.Group, &f.groupName)
	str("notify", string(file.Notify), &f.notify)
	str("notify-access", string(file.NotifyAccess), &f.notifyAccess)
	str("log-format", file.LogFormat, &f.logFormat)
	str("metrics-addr", file.MetricsAddr, &f.metricsAddr)
	if file.OnUpgrade.Action != "" {
		str("on-upgrade", file.OnUpgrade.String(), &f.onUpgrade)
	}
	dur("restart-delay", file.RestartDelay, &f.restartDelay)
	dur("restart-max-delay", file.RestartMaxDelay, &f.restartMaxDelay)
	dur("stable-after", file.StableAfter, &f.stableAfter)
	dur("start-limit-interval", file.StartLimitInterval, &f.startLimitInterval)
	dur("stop-timeout", file.StopTimeout, &f.stopTimeout)
	if !fl.Changed("start-limit") && file.StartLimit != nil {
		f.startLimit = *file.StartLimit
	}
	f.watch = f.watch || file.Watch
	f.force = f.force || file.Force
	f.enforceOrder = f.enforceOrder || file.EnforceOrder
	f.fdStore = f.fdStore || file.FDStore
	f.programStats = f.programStats || file.ProgramStats
	f.requireSignature = f.requireSignature || file.RequireSignature
	if !fl.Changed("trusted-key") {
		f.trustedKeys = file.TrustedKeys
	}
	if !fl.Changed("pins") && file.Pins != nil {
		f.pins = *file.Pins
	}
}

// checkStore checks --fd-store and --pins before anything is done: the
// store needs systemd, and no pins need the store.
func (f *runFlags) checkStore(objs []config.Object) error {
	if f.fdStore && os.Getenv("NOTIFY_SOCKET") == "" {
		return fmt.Errorf("fd_store: %w", fdstore.ErrNoNotifySocket)
	}
	return config.CheckPins(f.fdStore, f.pins, objs)
}

// readConfig reads the configuration file, or returns an empty one.
func readConfig(path string) (*config.File, error) {
	if path == "" {
		return &config.File{}, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	file, err := config.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return file, nil
}

// modes parses the modes the flags (and the file) give, before anything
// is done.
func (f *runFlags) modes() (mode config.RestartMode, notify config.Notify, access config.NotifyAccess, up config.OnUpgrade, err error) {
	if mode, err = config.ParseRestartMode(f.restart); err != nil {
		return
	}
	if notify, err = config.ParseNotify(f.notify); err != nil {
		err = fmt.Errorf("--notify %q: must be child or none", f.notify)
		return
	}
	if access, err = config.ParseNotifyAccess(f.notifyAccess); err != nil {
		err = fmt.Errorf("--notify-access %q: must be main (the child alone) or all (and its descendants)", f.notifyAccess)
		return
	}
	if up, err = config.ParseOnUpgrade(f.onUpgrade); err != nil {
		return
	}
	if f.metricsAddr != "" {
		err = config.CheckMetricsAddr(f.metricsAddr)
	}
	return
}

// objectsBuilder returns the function that makes the objects to install:
// the file's (read again on a reload after the first call, since it may
// have changed), then -o's, with -a and --map-access applied.
func (f *runFlags) objectsBuilder(file *config.File, log *slog.Logger) func() ([]config.Object, error) {
	parsed := file
	return func() ([]config.Object, error) {
		cur := parsed
		parsed = nil
		if cur == nil && f.configPath != "" {
			var err error
			if cur, err = readConfig(f.configPath); err != nil {
				return nil, err
			}
			if keys := file.ChangedSettings(cur); len(keys) > 0 {
				log.Warn("the configuration changed more than its objects; a reload applies the objects only, the rest when bpfsup restarts",
					"config", f.configPath, "changed", strings.Join(keys, ", "))
			}
		}
		var objs []config.Object
		if cur != nil {
			objs = append(objs, cur.Objects...)
		}
		for _, o := range f.objects {
			objs = append(objs, config.Object{Path: o})
		}
		// trusted_keys and require_signature as bpfsup started with them
		// (a reload applies the objects only); the key files are read
		// again at every reload.
		return applyFlags(withSigning(objs, f.trustedKeys, f.requireSignature), f.attaches, f.mapAccess)
	}
}

// options makes the supervisor's options from the flags and the file.
func (f *runFlags) options(file *config.File, args []string, log *slog.Logger) (supervisor.Options, error) {
	command := args
	if len(command) == 0 {
		command = file.Command
	}
	if len(command) == 0 {
		return supervisor.Options{}, usageError{errors.New("no command: bpfsup run [flags] -- CMD [ARG...]")}
	}
	mode, notify, access, up, err := f.modes()
	if err != nil {
		return supervisor.Options{}, usageError{err}
	}
	build := f.objectsBuilder(file, log)
	objs, err := build()
	if err != nil {
		return supervisor.Options{}, usageError{err}
	}
	if err := f.checkStore(objs); err != nil {
		return supervisor.Options{}, usageError{err}
	}
	if !f.pins {
		// Re-executes bpfsup in a mount namespace of its own, unless it
		// runs there already; before the socket-activated fds are taken,
		// which the re-exec must pass on as they came.
		if err := supervisor.EnterPrivateBPFFS(f.sf.store().RootDir()); err != nil {
			return supervisor.Options{}, err
		}
	}
	helper, err := spawn.HelperNamed(f.execHelper)
	if err != nil {
		return supervisor.Options{}, usageError{fmt.Errorf("--exec-helper %w", err)}
	}
	var cred *spawn.Credential
	if f.userName != "" || f.groupName != "" {
		if cred, err = lookupCredential(f.userName, f.groupName); err != nil {
			return supervisor.Options{}, usageError{err}
		}
	}
	inherited, err := inheritedFiles()
	if err != nil {
		return supervisor.Options{}, err
	}
	opts := supervisor.Options{
		Store: f.sf.store(), Objects: objs, Netns: f.netns, Command: command, ExecHelper: helper,
		Restart: supervisor.RestartPolicy{
			Mode: mode, Delay: f.restartDelay, MaxDelay: f.restartMaxDelay, StableAfter: f.stableAfter,
			StartLimit: f.startLimit, StartLimitInterval: f.startLimitInterval,
		},
		StopTimeout: f.stopTimeout, Credential: cred, NotifyChild: notify == config.NotifyChild, NotifyAccess: access,
		MetricsAddr: f.metricsAddr, OnUpgrade: up, Watch: f.watch, Reconfigure: build, Inherited: inherited,
		Logger: log, Version: bpfsupVersion(), Force: f.force, EnforceOrder: f.enforceOrder,
		FDStore: f.fdStore, PrivatePins: !f.pins, ProgramStats: f.programStats,
	}
	if f.configPath != "" {
		opts.WatchFiles = []string{f.configPath}
	}
	return opts, nil
}

func runCmd(code *int) *cobra.Command {
	var f runFlags
	c := &cobra.Command{
		Use:   "run [-c FILE] [-o OBJECT]... [-a PROG@HOOK[:TARGET]]... [flags] -- CMD [ARG...]",
		Short: "Install BPF objects and supervise an application that uses them",
		Long: `Install BPF objects (adopting what is already pinned), attach their programs, and run
CMD with the objects' fds named in LISTEN_FDS/LISTEN_FDNAMES. CMD is restarted by policy;
the programs stay attached when CMD or bpfsup dies.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			file, err := readConfig(f.configPath)
			if err != nil {
				return err
			}
			f.merge(file, cmd.Flags())
			log, err := newLogger(f.logFormat)
			if err != nil {
				return err
			}
			opts, err := f.options(file, args, log)
			if err != nil {
				return err
			}
			*code, err = supervisor.Run(context.Background(), opts)
			if err != nil && *code == 0 {
				*code = 1
			}
			if err != nil && f.logFormat == "json" {
				log.Error("bpfsup stopped", "err", err.Error(), "exit_code", *code)
				return loggedError{err}
			}
			return err
		},
	}
	f.add(c)
	return c
}
