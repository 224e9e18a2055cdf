package pinstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/bpfsup/bpfsup/internal/crash"
	"github.com/bpfsup/bpfsup/internal/fastio"
)

// ManifestVersion is the schema version of Manifest; it changes only when a
// field changes meaning or goes away.
const ManifestVersion = 1

// Manifest records what bpfsup believes it installed for one object. It is
// used for status and to recognise bpfsup's own pins, and never trusted over
// what the kernel and the pins say.
type Manifest struct {
	Version int    `json:"version"`
	Object  string `json:"object"`
	PinRoot string `json:"pin_root"`
	// Source is the object file, ObjectSHA256 its content's hash.
	Source       string `json:"source"`
	ObjectSHA256 string `json:"object_sha256"`
	// Signer names the key that signed the object file, when the
	// configuration has it checked (internal/objsign).
	Signer string `json:"signer,omitempty"`
	// ConfigHash is a hash of the object's configuration.
	ConfigHash string `json:"config_hash"`
	// Generation counts installs that changed a program.
	Generation uint64    `json:"generation"`
	Updated    time.Time `json:"updated"`

	Maps     map[string]MapRecord     `json:"maps"`
	Programs map[string]ProgramRecord `json:"programs"`
	Links    map[string]LinkRecord    `json:"links"`

	// Supervisor describes the running supervisor, if any.
	Supervisor *SupervisorRecord `json:"supervisor,omitempty"`

	// Plan is what the install planned from besides the object and its
	// configuration (hashed above), for a restart that finds nothing
	// changed and adopts without reading the object's programs again.
	Plan *PlanRecord `json:"plan,omitempty"`
}

// PlanRecord is the rest of what an install's plan came from, and the one
// thing of it the records above do not keep.
type PlanRecord struct {
	// Key names the build of bpfsup that planned and its default network
	// namespace: another build may plan the same configuration otherwise.
	Key string `json:"key"`
	// Links are the names of the links in the plan's order, which is the
	// order of their fds in the hand-off.
	Links []string `json:"links"`
}

// MapRecord is one map in the manifest.
type MapRecord struct {
	ID   uint32 `json:"id"`
	Path string `json:"path"`
	// PreviousIDs are maps this one replaced (reset or migrated) that may
	// still be pinned at Path after a crash before the new one's pin moved
	// into place.
	PreviousIDs []uint32 `json:"previous_ids,omitempty"`
	// Made says that bpfsup made the map and pinned it at Path. It is false
	// for a map that another tool pinned at the map's own pin path
	// (pin_path), which bpfsup adopted and teardown leaves.
	Made bool `json:"made,omitempty"`
}

// ProgramRecord is one program in the manifest. PreviousIDs are ids this
// program had in earlier generations that may still be pinned after a crash.
type ProgramRecord struct {
	ID          uint32   `json:"id"`
	Tag         string   `json:"tag"`
	Type        string   `json:"type"`
	PreviousIDs []uint32 `json:"previous_ids,omitempty"`
	// Source, Data and Target are the program's digest (ProgramDigest) as
	// it was loaded: what its adoption is checked against besides its tag.
	Source string `json:"source,omitempty"`
	Data   string `json:"data,omitempty"`
	Target string `json:"target,omitempty"`
}

// LinkRecord is one link in the manifest.
type LinkRecord struct {
	// ID is the link's id; a tc filter's record's (a map's) for Kind
	// "tc_filter".
	ID uint32 `json:"id"`
	// Kind is what the attachment is: "link" (a bpf_link) or "tc_filter"
	// (hooks.AttachmentKind); "" in manifests of bpfsup before 2026-12.
	Kind    string `json:"kind,omitempty"`
	Program string `json:"program"`
	// Hook is the hook spec, e.g. "xdp:veth0".
	Hook  string `json:"hook"`
	Netns string `json:"netns,omitempty"`
	// NetnsInode is the inode of the network namespace the link was
	// attached (or found attached) in, for network hooks: a namespace made
	// again at the path Netns is another inode.
	NetnsInode uint64 `json:"netns_inode,omitempty"`
	// Mechanism is how the program is attached, e.g. "bpf_link (xdp)".
	Mechanism string `json:"mechanism"`
	// Updatable says whether the link's program can be swapped in place.
	Updatable   bool     `json:"updatable"`
	PreviousIDs []uint32 `json:"previous_ids,omitempty"`
	// Place is the link's configured place on an ordered hook (tcx,
	// netkit): "first", "last", "before" or "after"; "" when the
	// configuration gives none (attached last, not held there).
	Place string `json:"place,omitempty"`
	// Anchor is the configured anchor of before and after ("[OBJECT/]PROG"
	// or a pin path), and AnchorPath the pin of its link.
	Anchor     string `json:"anchor,omitempty"`
	AnchorPath string `json:"anchor_path,omitempty"`
}

// SupervisorRecord describes the supervisor that manages the object.
type SupervisorRecord struct {
	PID      int       `json:"pid"`
	Version  string    `json:"version"`
	Started  time.Time `json:"started"`
	ChildPID int       `json:"child_pid,omitempty"`
	Restarts int       `json:"restarts"`
	// Ready says that the child is ready: started, or, when bpfsup waits
	// for its own READY=1 (notify = "child"), said so.
	Ready bool `json:"ready,omitempty"`
	// FDStore says that the supervisor keeps the object in systemd's fd
	// store too; PrivatePins that its pins are on a bpffs of the
	// supervisor's own (pins = false), seen at /proc/PID/root.
	FDStore     bool `json:"fd_store,omitempty"`
	PrivatePins bool `json:"private_pins,omitempty"`
	// Unit is the systemd unit the supervisor runs in, if any.
	Unit string `json:"unit,omitempty"`
	// ProgramStats says that the supervisor has the kernel count its
	// programs' runs and run time (program_stats = true).
	ProgramStats bool `json:"program_stats,omitempty"`
}

// manifestTemp is where WriteManifest writes the manifest of object name
// before it moves into place.
func (s Store) manifestTemp(name string) string {
	return filepath.Join(s.stateDir(), "."+name+".json.tmp")
}

// ReadManifest reads the manifest of object name. A missing manifest is
// (nil, nil).
func (s Store) ReadManifest(name string) (*Manifest, error) {
	var m Manifest
	err, decodeErr := decodeFile(s.ManifestPath(name), &m)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest of %s: %w", name, err)
	}
	if decodeErr != nil {
		return nil, fmt.Errorf("manifest %s: %w", s.ManifestPath(name), decodeErr)
	}
	if m.PinRoot != "" && m.PinRoot != s.root() {
		// A manifest of a same-named object under another pin root.
		return nil, nil
	}
	return &m, nil
}

// WriteManifestUnlessSame writes m, unless old (the manifest on record) says
// all the same things: a restart that adopted everything as it was rewrites
// nothing. It returns whether it wrote.
func (o *Object) WriteManifestUnlessSame(m, old *Manifest) (bool, error) {
	if old != nil {
		a, b := *m, *old
		a.Version, a.Object, a.PinRoot = ManifestVersion, o.Name, o.store.root()
		a.Updated, b.Updated = time.Time{}, time.Time{}
		if reflect.DeepEqual(a, b) {
			m.Version, m.Object, m.PinRoot, m.Updated = old.Version, old.Object, old.PinRoot, old.Updated
			return false, nil
		}
	}
	return true, o.WriteManifest(m)
}

// WriteManifest replaces the object's manifest atomically.
func (o *Object) WriteManifest(m *Manifest) error {
	m.Version = ManifestVersion
	m.Object = o.Name
	m.PinRoot = o.store.root()
	m.Updated = time.Now().UTC()
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	crash.At("manifest/before-write")
	path := o.store.ManifestPath(o.Name)
	// One name, not a random one: the object's lock makes this process
	// its only writer, and Open removes what a crash left there.
	tmp, err := os.OpenFile(o.store.manifestTemp(o.Name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	crash.At("manifest/after-write")
	return nil
}

// fileBufs lends the memory decodeFile reads a file into. json.Unmarshal
// copies what it keeps, so the memory goes back once the file is decoded;
// a start or a status of a hundred objects reads two hundred manifests into
// the same few buffers instead of touching fresh memory for each. Buffers
// larger than fileBufMax are left to the collector.
var fileBufs = sync.Pool{New: func() any { return new([]byte) }}

const fileBufMax = 64 << 10

// decodeFile reads the JSON file at path into v: readErr is the read's
// error (os.ErrNotExist and all), decodeErr the decoder's.
func decodeFile(path string, v any) (readErr, decodeErr error) {
	bp := fileBufs.Get().(*[]byte)
	data, err := fastio.ReadFileInto(path, *bp)
	if err != nil {
		fileBufs.Put(bp)
		return err, nil
	}
	decodeErr = json.Unmarshal(data, v)
	if cap(data) <= fileBufMax {
		*bp = data[:0]
		fileBufs.Put(bp)
	}
	return nil, decodeErr
}
