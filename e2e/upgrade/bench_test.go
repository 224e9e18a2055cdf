package upgrade

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/control"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// BenchmarkReload measures an upgrade of dropfilter attached to 1, 10 and
// 100 XDP hooks (veth interfaces), from the request on the
// control socket (what `bpfsup reload` sends) to the reply. ns/op is the
// whole request; the metrics split it, from bpfsup's reply:
//
//	load-ms/op             loading the two new programs: the verifier's time
//	swapped-ms/op          from the start of the reload until every link runs the new program
//	swapped-no-load-ms/op  the same without the verifier's time
//	swap-phase-ms/op       the link swaps alone, first to last
//
// The "unchanged" runs reload the same object: nothing is loaded or
// swapped, what is left is planning and adopting.
//
//	go test -run '^$' -bench Reload -benchtime 20x ./e2e/upgrade
func BenchmarkReload(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		for _, change := range []bool{true, false} {
			name := fmt.Sprintf("links=%d/upgrade", n)
			if !change {
				name = fmt.Sprintf("links=%d/unchanged", n)
			}
			b.Run(name, func(b *testing.B) { benchReload(b, n, change) })
		}
	}
}

func benchReload(b *testing.B, links int, change bool) {
	e := testutil.MustEnv(b)
	ns := testutil.MustNetns(b, "upb")
	var batch strings.Builder
	attach := make([]attachment, links)
	for i := range attach {
		fmt.Fprintf(&batch, "link add d%d type veth peer name p%d\nlink set d%d up\nlink set p%d up\n", i, i, i, i)
		attach[i] = attachment{"xdp_drop", fmt.Sprintf("xdp:d%d", i)}
	}
	cmd := exec.Command("ip", "-n", ns.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("make %d veth pairs: %v\n%s", links, err, out)
	}
	dir := b.TempDir()
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	deploy(b, obj, "dropfilter")
	cfgPath := filepath.Join(dir, "bpfsup.toml")
	config{object: obj, netns: ns.Path, attach: attach}.write(b, cfgPath)
	p := startBpfsup(b, e, "", "-c", cfgPath, "--on-upgrade", "none")
	testutil.WaitFor(b, 30*time.Second, "bpfsup to start the child", func() bool { return strings.Contains(p.Output(), "child: pid=") })
	socket := control.Socket(e.StateDir, p.Pid())

	var load, swapped, swapPhase time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if change {
			b.StopTimer()
			deploy(b, obj, []string{"dropfilter_v2", "dropfilter"}[i%2])
			b.StartTimer()
		}
		reply, err := control.Request(socket, "reload", time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		if !reply.OK || reply.Reload == nil {
			b.Fatalf("reload: %s", reply.Error)
		}
		r := reply.Reload
		if o := r.Objects[0]; o.Changed != change || (change && len(o.Swapped) != links) {
			b.Fatalf("reload %d: %+v, want %d links swapped: %v", i, o, links, change)
		}
		load += r.Load
		swapped += r.Swapped
		swapPhase += r.Swap
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
	b.ReportMetric(ms(load), "load-ms/op")
	b.ReportMetric(ms(swapped), "swapped-ms/op")
	b.ReportMetric(ms(swapped-load), "swapped-no-load-ms/op")
	b.ReportMetric(ms(swapPhase), "swap-phase-ms/op")
}
