package converge

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
)

// fakeTx records the phases Apply runs, and fails the one it is told to.
type fakeTx struct {
	name        string
	failPrepare bool
	failSwap    bool
	log         *[]string
	state       string
}

func (f *fakeTx) Name() string { return f.name }

func (f *fakeTx) Prepare() error {
	if f.failPrepare {
		return errors.New("prepare refused")
	}
	f.state = "prepared"
	return nil
}

func (f *fakeTx) Swap() error {
	if f.failSwap {
		f.state = "half-swapped"
		return errSwap
	}
	f.state = "swapped"
	return nil
}

func (f *fakeTx) Rollback() {
	if f.state != "" {
		*f.log = append(*f.log, f.name+" rolled back "+f.state)
	}
	f.state = ""
}

var errSwap = errors.New("swap refused")

// TestApplyOrder: when the swap of one object fails, the objects prepared
// after it roll back first, then it, then those swapped before it, last
// first, as a single install's rollback goes; when a prepare fails, it and
// those before it roll back, last first; when all swap, none rolls back.
func TestApplyOrder(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var got []string
	txs := []phases{&fakeTx{name: "a", log: &got}, &fakeTx{name: "b", failSwap: true, log: &got}, &fakeTx{name: "c", log: &got}}
	if err := apply("reload", txs, log); !errors.Is(err, errSwap) {
		t.Fatalf("b's swap failing: error %v, want %v", err, errSwap)
	}
	if want := []string{"c rolled back prepared", "b rolled back half-swapped", "a rolled back swapped"}; !slices.Equal(got, want) {
		t.Fatalf("b's swap failing: rollbacks %q, want %q", got, want)
	}

	var o []string
	txs = []phases{&fakeTx{name: "a", log: &o}, &fakeTx{name: "b", failPrepare: true, log: &o}, &fakeTx{name: "c", log: &o}}
	if err := apply("start", txs, log); err == nil {
		t.Fatal("b's prepare failing: no error")
	}
	if want := []string{"a rolled back prepared"}; !slices.Equal(o, want) {
		t.Fatalf("b's prepare failing: rollbacks %q, want %q", o, want)
	}

	o = nil
	txs = []phases{&fakeTx{name: "a", log: &o}, &fakeTx{name: "b", log: &o}, &fakeTx{name: "c", log: &o}}
	if err := apply("reload", txs, log); err != nil || len(o) != 0 {
		t.Fatalf("none failing: error %v, rollbacks %q", err, o)
	}
}
