package operate

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// signer is an SSH key pair made by ssh-keygen, the way a release
// engineer makes one.
type signer struct{ key, pub string }

func newSigner(t *testing.T, name string) signer {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-C", name+"@release", "-f", path)
	return signer{key: path, pub: path + ".pub"}
}

// sign writes file.sig, signed with ssh-keygen -Y sign -n bpfsup.
func (s signer) sign(t *testing.T, file string) {
	t.Helper()
	os.Remove(file + ".sig")
	sshKeygen(t, "-Y", "sign", "-q", "-f", s.key, "-n", "bpfsup", file)
}

func sshKeygen(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Fatalf("ssh-keygen not found: install openssh-client (scripts/setup.sh does): %v", err)
	}
	if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// refusedStart runs bpfsup run with args and wants it to refuse before
// anything is pinned or attached, saying every one of words.
func refusedStart(t *testing.T, e *testutil.Env, r *trafficRig, what string, args []string, words ...string) {
	t.Helper()
	out, code := e.Run(t, "run", append(args, "--restart", "never", "--", "true")...)
	if code == 0 {
		t.Fatalf("%s: bpfsup started:\n%s", what, out)
	}
	e2e.WantAll(t, out, words...)
	if left := e2e.TreeEntries(t, e.PinRoot); len(left) > 0 {
		t.Errorf("%s: pinned %v", what, left)
	}
	if id := e2e.IPLinkXDP(t, r.b, r.ifB.Name); id != 0 {
		t.Errorf("%s: XDP program %d attached", what, id)
	}
}

// A digest or a signature that does not match refuses the start before
// anything is pinned or attached, with an error that names the file and
// the expected and found digest or signer; bad digests and key files are
// errors too.
func TestVerifyRefusesStart(t *testing.T) {
	e := testutil.MustEnv(t)
	r := newTrafficRig(t)
	release, stranger := newSigner(t, "release"), newSigner(t, "stranger")
	dir := t.TempDir()
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	e2e.PutObject(t, obj, "dropfilter")
	sum := fileSHA256(t, obj)
	attach := []string{"--netns", r.b.Path, "-a", "xdp_drop@xdp:" + r.ifB.Name}
	cfgWith := func(extra string) []string {
		return append([]string{"-c", e2e.WriteConfig(t, extra+"[[object]]\npath = \""+obj+"\"\n")}, attach...)
	}
	objWith := func(line string) []string {
		return append([]string{"-c", e2e.WriteConfig(t, "[[object]]\npath = \""+obj+"\"\n"+line+"\n")}, attach...)
	}

	wrong := strings.Repeat("0", 64)
	refusedStart(t, e, r, "another digest", objWith(`sha256 = "`+wrong+`"`), obj, wrong, sum, "sha256 mismatch")
	refusedStart(t, e, r, "a short digest", objWith(`sha256 = "abc123"`), "abc123", "want 64 hex digits")
	refusedStart(t, e, r, "a digest not in hex", objWith(`sha256 = "`+strings.Repeat("z", 64)+`"`), "not hex")

	stranger.sign(t, obj)
	refusedStart(t, e, r, "a key not listed", cfgWith(`trusted_keys = ["`+release.pub+`"]`+"\n"), obj, "not trusted", release.pub)
	e2e.PutObject(t, obj, "dropfilter_v2") // the signature is of dropfilter
	release.sign(t, obj)
	e2e.PutObject(t, obj, "dropfilter")
	refusedStart(t, e, r, "a signature of another file", cfgWith(`trusted_keys = ["`+release.pub+`"]`+"\n"), obj, "release@release", "another file")
	release.sign(t, obj)
	sig, _ := os.ReadFile(obj + ".sig")
	if err := os.WriteFile(obj+".sig", sig[:len(sig)/3], 0o644); err != nil {
		t.Fatal(err)
	}
	refusedStart(t, e, r, "a truncated signature", cfgWith(`trusted_keys = ["`+release.pub+`"]`+"\n"), obj+".sig", "truncated")
	os.Remove(obj + ".sig")
	refusedStart(t, e, r, "unsigned, --require-signature",
		append(cfgWith(`trusted_keys = ["`+release.pub+`"]`+"\n"), "--require-signature"), obj+".sig", "no signature")
	notKey := filepath.Join(dir, "notakey.pub")
	if err := os.WriteFile(notKey, []byte("this is not a key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	release.sign(t, obj)
	refusedStart(t, e, r, "a key file that is not a key", cfgWith(`trusted_keys = ["`+notKey+`"]`+"\n"), notKey, "not an SSH public key")

	// check says the same, exit 1.
	out, code := e.Run(t, "check", append(objWith(`sha256 = "`+wrong+`"`), "--json")...)
	if code != 1 || !strings.Contains(out, wrong) {
		t.Errorf("check of a wrong digest exited %d:\n%s", code, out)
	}
}

// A signed object starts, and status shows its digest and signer; a
// reload to an object signed by a key not listed, or unsigned under
// --require-signature, is refused, and the running program stays.
func TestVerifyReload(t *testing.T) {
	e := testutil.MustEnv(t)
	r := newTrafficRig(t)
	release, stranger := newSigner(t, "release"), newSigner(t, "stranger")
	obj := filepath.Join(t.TempDir(), "dropfilter.bpf.o")
	e2e.PutObject(t, obj, "dropfilter")
	release.sign(t, obj)
	cfg := e2e.WriteConfig(t, "trusted_keys = [\""+release.pub+"\"]\nrequire_signature = true\n[[object]]\npath = \""+obj+"\"\n")
	sup := e.Start(t, "run", "-c", cfg, "--netns", r.b.Path, "-a", "xdp_drop@xdp:"+r.ifB.Name, "--restart", "never", "--", "sleep", "1000")
	sup.WaitOutput(t, "child started", startTimeout)
	o := e2e.ObjectStatus(t, e, "dropfilter")
	if !strings.Contains(o.Signer, "release@release") || o.ObjectSHA256 != fileSHA256(t, obj) {
		t.Fatalf("status: signer %q, sha256 %s", o.Signer, o.ObjectSHA256)
	}
	e2e.WantAll(t, e2e.MustRun(t, e, "status"), "signed by release@release")
	running := e2e.IPLinkXDP(t, r.b, r.ifB.Name)

	e2e.PutObject(t, obj, "dropfilter_v2")
	stranger.sign(t, obj)
	out, code := e.Run(t, "reload")
	if code == 0 || !strings.Contains(out, "not trusted") {
		t.Fatalf("reload to an object signed by a key not listed exited %d:\n%s", code, out)
	}
	os.Remove(obj + ".sig")
	out, code = e.Run(t, "reload")
	if code == 0 || !strings.Contains(out, "no signature") {
		t.Fatalf("reload to an unsigned object exited %d:\n%s", code, out)
	}
	if id := e2e.IPLinkXDP(t, r.b, r.ifB.Name); id != running {
		t.Errorf("the refused reloads changed the XDP program: %d, then %d", running, id)
	}
	release.sign(t, obj)
	if out, code := e.Run(t, "reload"); code != 0 {
		t.Fatalf("reload to a signed v2 exited %d:\n%s", code, out)
	}
	if id := e2e.IPLinkXDP(t, r.b, r.ifB.Name); id == running {
		t.Errorf("the signed v2 did not replace the program")
	}
}
