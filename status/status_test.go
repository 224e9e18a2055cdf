package status

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func sampleStatus(objects int) *Status {
	st := &Status{Schema: StatusSchema, PinRoot: "/sys/fs/bpf/bpfsup", StateDir: "/run/bpfsup", Healthy: objects != 2, Objects: []ObjectStatus{}}
	for i := range objects {
		o := ObjectStatus{Name: "fw" + strings.Repeat("x", i), Dir: "/sys/fs/bpf/bpfsup/fw", Generation: uint64(i),
			Supervisor: &SupervisorStatus{PID: 42 + i, Version: "v<1>", Started: time.Unix(1700000000, 0).UTC()},
			Maps:       []MapStatus{{Name: "drop_ports", Path: "/sys/fs/bpf/bpfsup/fw/maps/drop_ports", ID: 7, Type: "Hash", Entries: -1}},
			Programs:   []ProgramStatus{{Name: "xdp_drop", ID: 9, Type: "XDP", Tag: "aabb", LoadedAt: time.Unix(1700000001, 0).UTC()}},
			Links:      []LinkStatus{{Name: "xdp_drop", ID: 3, Type: "xdp", ProgramID: 9, Hook: "xdp:eth1", State: "attached"}},
			Healthy:    i != 1,
		}
		if i == 1 {
			o.Problems = []string{"map m: \"quoted\" & <escaped>"}
		}
		st.Objects = append(st.Objects, o)
	}
	return st
}

// status --json writes, an object at a time, the document MarshalIndent of
// the whole status would: the same bytes.
func TestWriteJSONIsMarshalIndent(t *testing.T) {
	for _, n := range []int{0, 1, 3} {
		st := sampleStatus(n)
		want, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := st.WriteJSON(&got); err != nil {
			t.Fatal(err)
		}
		if got.String() != string(want)+"\n" {
			t.Errorf("%d objects: WriteJSON wrote\n%s\nMarshalIndent gives\n%s", n, got.String(), want)
		}
	}
}

func TestRender(t *testing.T) {
	var b bytes.Buffer
	if err := sampleStatus(0).Render(&b); err != nil || b.String() != "no objects under /sys/fs/bpf/bpfsup\n" {
		t.Fatalf("no objects: %q, %v", b.String(), err)
	}
	b.Reset()
	if err := sampleStatus(2).Render(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"object fw (/sys/fs/bpf/bpfsup/fw) generation 0\n",
		"  supervisor pid 42 version v<1>, restarts 0\n",
		"  link    xdp_drop             id 3      xdp program 9 hook xdp:eth1 attached\n",
		"  problem: map m: \"quoted\" & <escaped>\n  NOT HEALTHY\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, b.String())
		}
	}
}
