package supervisor

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/control"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// A control socket quiesced for a re-exec answers the reload it had taken
// with an error (the loop that would make it is the one re-executing), holds
// new requests in its backlog instead of refusing them, and answers them once
// resumed.
func TestControlQuiesce(t *testing.T) {
	reloads := make(chan reloadRequest) // nobody makes reloads: the loop is "re-executing"
	c, err := listenControl(t.TempDir(), reloads, func() []byte { return []byte(`{}`) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	go c.serve()
	defer c.close()

	type result struct {
		r   *control.Reply
		err error
	}
	ask := func(req string) <-chan result {
		ch := make(chan result, 1)
		go func() {
			r, err := control.Request(c.path, req, 30*time.Second)
			ch <- result{r, err}
		}()
		return ch
	}
	reload := ask("reload")
	testutil.WaitFor(t, 10*time.Second, "the reload request in the control socket's hands", func() bool {
		return c.busy.Len() == 1
	})

	c.quiesce()
	got := <-reload
	if got.err != nil || got.r.OK || !strings.Contains(got.r.Error, "re-executing") {
		t.Fatalf("reload during quiesce: %+v, %v; want a refusal that says bpfsup is re-executing", got.r, got.err)
	}
	// Asked while quiesced: connected, in the backlog, not answered.
	conn, err := net.Dial("unix", c.path)
	if err != nil {
		t.Fatalf("connect while quiesced: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("status\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now())
	if n, err := conn.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("answered while quiesced (%d bytes, %v)", n, err)
	}
	c.resume()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var r control.Reply
	if err := json.NewDecoder(conn).Decode(&r); err != nil || !r.OK {
		t.Fatalf("status after resume: %+v, %v", r, err)
	}
}
