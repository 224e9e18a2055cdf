package upgrade

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestReloadRepinsRemovedLinkPin: a link pin removed by hand while bpfsup
// runs (it holds the link, which stays attached) is a problem status names,
// and the next reload pins the same link again instead of calling it
// foreign or attaching a second one.
func TestReloadRepinsRemovedLinkPin(t *testing.T) {
	e := testutil.MustEnv(t)
	_, _, _, _, cfgPath := xdpDropfilter(t, "urp", "")
	p := startBpfsup(t, e, "", "-c", cfgPath)
	waitChildren(t, p, 1)
	linkID, progID := linkIDs(t, e, "xdp_drop")
	if err := os.Remove(pinPath(e, "links", "xdp_drop")); err != nil {
		t.Fatal(err)
	}
	st := status(t, e, "dropfilter")
	want := fmt.Sprintf("link xdp_drop: bpfsup installed id %d, and nothing is pinned at", linkID)
	if !slices.ContainsFunc(st.Problems, func(s string) bool { return strings.Contains(s, want) }) {
		t.Fatalf("status problems %q, want one saying %q", st.Problems, want)
	}

	out := e2e.MustRun(t, e, "reload")
	if l, pr := linkIDs(t, e, "xdp_drop"); l != linkID || pr != progID {
		t.Fatalf("after the reload link %d runs program %d, want the same link %d with %d:\n%s", l, pr, linkID, progID, out)
	}
	if st := status(t, e, "dropfilter"); len(st.Problems) != 0 {
		t.Fatalf("status problems after the reload: %q", st.Problems)
	}
	testutil.WaitFor(t, 5*time.Second, "bpfsup to log that it pinned the link again", func() bool {
		return strings.Contains(p.Output(), `msg="link pin was gone; pinned the link bpfsup recorded again" object=dropfilter link=xdp_drop`)
	})
}
