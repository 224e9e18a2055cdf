package converge

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The bytes verified are the bytes planned: a file replaced on disk after
// its check (an attacker's swap between the check and the load) is not
// what the plan parses, and a plan from the file as it is now is refused.
func TestVerifiedBytesArePlanned(t *testing.T) {
	obj := filepath.Join(t.TempDir(), "dropfilter.bpf.o")
	put := func(name string) {
		t.Helper()
		data, err := os.ReadFile(testutil.BPFObject(name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(obj, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	put("dropfilter")
	sum := ObjectSHA256(mustRead(t, obj))
	cfg := config.Object{Path: obj, SHA256: sum}
	f, err := readObject(cfg)
	if err != nil {
		t.Fatalf("the object as configured: %v", err)
	}
	put("dropfilter_v2") // swapped after the check
	p, err := planObjectData(cfg, f, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.sha256 != sum {
		t.Errorf("planned sha256 %s, verified %s", p.sha256, sum)
	}
	if ObjectSHA256(f.data) != sum {
		t.Errorf("the bytes planned are not the bytes verified")
	}
	if _, err := PlanObject(cfg, PlanOptions{}); err == nil || !strings.Contains(err.Error(), sum) {
		t.Errorf("a plan from the swapped file: %v, want a digest mismatch naming %s", err, sum)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestStatNumber(t *testing.T) {
	log := "func#0 @0\nprocessed 466805 insns (limit 1000000) max_states_per_insn 4 total_states 1 peak_states 1 mark_read 0\nverification time 61234 usec\nstack depth 0\n"
	if n, ok := statNumber(log, "processed ", " insns"); !ok || n != 466805 {
		t.Errorf("processed: %d, %v", n, ok)
	}
	if n, ok := statNumber(log, "verification time ", " usec"); !ok || n != 61234 {
		t.Errorf("verification time: %d, %v", n, ok)
	}
	// Where "processed " comes first in another sense, the statistics
	// line is still found.
	if n, ok := statNumber("0: R1 processed by func#1\nprocessed 58 insns (limit 1000000)\n", "processed ", " insns"); !ok || n != 58 {
		t.Errorf("processed after another \"processed \": %d, %v", n, ok)
	}
	for _, bad := range []string{"", "processed insns", "processed x insns", "verification time 12", "processed 12 bytes"} {
		if n, ok := statNumber(bad, "processed ", " insns"); ok {
			t.Errorf("%q: %d, want none", bad, n)
		}
	}
}
