package hooks

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestNetnsHooks(t *testing.T) {
	for _, tc := range []struct{ kind, program string }{
		{"sk_lookup", "sk_lookup_count"},
		{"flow_dissector", "flow_count"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			ns := testutil.MustNetns(t, "sk")
			other := testutil.MustNetns(t, "sk")
			prog := mustProgram(t, "hooks", tc.program)
			progB := mustProgram(t, "hooks_v2", tc.program)
			h := mustHook(t, tc.kind+":"+ns.Path, "")
			if !h.Updatable() {
				t.Fatalf("%s: Updatable() = false", tc.kind)
			}
			l := mustAttach(t, h, prog)
			wantState(t, h, l, Attached)
			wantState(t, mustHook(t, tc.kind+":"+other.Path, ""), l, Elsewhere)
			otherKind := map[string]string{"sk_lookup": "flow_dissector", "flow_dissector": "sk_lookup"}[tc.kind]
			wantState(t, mustHook(t, otherKind+":"+ns.Path, ""), l, Elsewhere)

			if err := l.Update(progB, prog); err != nil {
				t.Fatalf("update %s link: %v", tc.kind, err)
			}
			if got := linkInfo(t, l).Program; got != progID(t, progB) {
				t.Fatalf("after update the link runs %d, want %d", got, progID(t, progB))
			}
			if tc.kind == "flow_dissector" {
				_, err := h.Attach(prog)
				if err == nil || !strings.Contains(err.Error(), "already has a flow dissector") {
					t.Fatalf("second flow dissector: %v, want an error saying the namespace has one", err)
				}
			}

			// The namespace goes away: the link is defunct.
			mustIP(t, "netns", "del", ns.Name)
			testutil.WaitFor(t, 10*time.Second, "the link to turn defunct", func() bool {
				st, err := h.Check(l)
				return err == nil && st == Defunct
			})
			if err := CheckTarget(h.Spec()); !errors.Is(err, ErrTargetNotFound) {
				t.Fatalf("CheckTarget with the namespace gone: %v, want ErrTargetNotFound", err)
			}
		})
	}
}

func TestNetnsHookRefuses(t *testing.T) {
	testutil.RequireRoot(t)
	prog := mustProgram(t, "hooks", "sk_lookup_count")
	if _, err := mustHook(t, "sk_lookup:"+t.TempDir(), "").Attach(prog); !errors.Is(err, ErrBadSpec) {
		t.Errorf("attach to a directory: %v, want ErrBadSpec", err)
	}
	if _, err := mustHook(t, "sk_lookup:/run/netns/no-such-bpfsup-netns", "").Attach(prog); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("attach to a missing namespace: %v, want ErrTargetNotFound", err)
	}
	ns := testutil.MustNetns(t, "sk")
	if _, err := mustHook(t, "flow_dissector:"+ns.Path, "").Attach(prog); !errors.Is(err, ErrWrongProgramType) {
		t.Errorf("sk_lookup program as flow dissector: %v, want ErrWrongProgramType", err)
	}
}
