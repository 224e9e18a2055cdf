package supervisor

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
)

// TestSwapStagedOrder: when the swap of one object of a reload fails, the
// objects staged after it roll back first, then it, then those swapped
// before it, last first, as a single install's rollback goes; when all
// swap, all are kept.
func TestSwapStagedOrder(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	errSwap := errors.New("swap refused")
	run := func(failing int) ([]string, []*installed, error) {
		var mu sync.Mutex
		var order []string
		record := func(s string) {
			mu.Lock()
			order = append(order, s)
			mu.Unlock()
		}
		plans := []*plan{{name: "a"}, {name: "b"}, {name: "c"}}
		stages := make([]*stagedInstall, len(plans))
		for k, p := range plans {
			st := newStagedInstall()
			atFirst := make(chan struct{})
			gates := st.gates(atFirst)
			go func() {
				// An install, as far as the gates see it.
				if err := gates.beforeSwap(); err != nil {
					record(p.name + " rolled back unswapped")
					st.done <- stagedResult{nil, err}
					return
				}
				if k == failing {
					gates.failed(errSwap)
					record(p.name + " rolled back its failed swap")
					st.done <- stagedResult{nil, errSwap}
					return
				}
				if err := gates.afterSwap(); err != nil {
					record(p.name + " swapped back")
					st.done <- stagedResult{nil, err}
					return
				}
				st.done <- stagedResult{&installed{plan: p}, nil}
			}()
			<-atFirst
			stages[k] = st
		}
		ins, err := swapStaged("reload", plans, stages, log)
		return order, ins, err
	}

	order, ins, err := run(1)
	if !errors.Is(err, errSwap) || ins != nil {
		t.Fatalf("b failing: installs %v, error %v; want none and %v", ins, err, errSwap)
	}
	want := []string{"c rolled back unswapped", "b rolled back its failed swap", "a swapped back"}
	if !slices.Equal(order, want) {
		t.Fatalf("b failing: rollbacks %q, want %q", order, want)
	}

	order, ins, err = run(-1)
	if err != nil || len(ins) != 3 || ins[0] == nil || ins[2] == nil || len(order) != 0 {
		t.Fatalf("none failing: installs %v, error %v, rollbacks %q", ins, err, order)
	}
}
