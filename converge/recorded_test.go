package converge

import (
	"testing"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

// recordedState trusts the manifest it is given for a link whose hook the
// kernel does not describe (perf_event links before Linux 6.6): the link is
// on the configured hook only if that manifest says so.
func TestRecordedState(t *testing.T) {
	spec, err := hooks.Parse("tracepoint:syscalls/sys_enter_getppid")
	if err != nil {
		t.Fatal(err)
	}
	other, err := hooks.Parse("tracepoint:syscalls/sys_exit_getppid")
	if err != nil {
		t.Fatal(err)
	}
	m := &pinstore.Manifest{Links: map[string]pinstore.LinkRecord{"tp": {ID: 7, Program: "tp", Hook: spec.String()}}}
	for _, tt := range []struct {
		name string
		m    *pinstore.Manifest
		link string
		spec hooks.Spec
		want hooks.State
	}{
		{"recorded on the hook", m, "tp", spec, hooks.Attached},
		{"recorded on another hook", m, "tp", other, hooks.Elsewhere},
		{"not recorded", m, "other", spec, hooks.Elsewhere},
		{"no manifest", nil, "tp", spec, hooks.Elsewhere},
	} {
		if got := recordedState(tt.m, tt.link, tt.spec); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
