package objsign

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sshKeygen runs ssh-keygen (openssh-client; scripts/setup.sh installs it).
func sshKeygen(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Fatalf("ssh-keygen not found: install openssh-client (scripts/setup.sh does): %v", err)
	}
	out, err := exec.Command("ssh-keygen", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newKey makes a key pair of type typ in dir, named name; it returns the
// private key's path (the public key is that with .pub).
func newKey(t *testing.T, dir, name, typ string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	args := []string{"-q", "-t", typ, "-N", "", "-C", name + "@build", "-f", path}
	if typ == "rsa" {
		args = append(args, "-b", "2048")
	}
	sshKeygen(t, args...)
	return path
}

// sign signs file with key in namespace ns: file.sig.
func sign(t *testing.T, key, ns, file string) string {
	t.Helper()
	os.Remove(file + ".sig")
	sshKeygen(t, "-Y", "sign", "-q", "-f", key, "-n", ns, file)
	return file + ".sig"
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	dir := t.TempDir()
	ed := newKey(t, dir, "release", "ed25519")
	rsa := newKey(t, dir, "legacy", "rsa")
	ec := newKey(t, dir, "hsm", "ecdsa")
	other := newKey(t, dir, "stranger", "ed25519")
	keys, err := LoadKeys([]string{ed + ".pub", rsa + ".pub", ec + ".pub"})
	if err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(dir, "fw.bpf.o")
	content := "\x7fELF pretend object"
	write(t, obj, content)
	data := []byte(content)

	for _, key := range []string{ed, rsa, ec} {
		sign(t, key, Namespace, obj)
		res, err := Verify(obj, data, Want{Keys: keys, Require: true})
		if err != nil {
			t.Fatalf("a good signature by %s: %v", key, err)
		}
		if !strings.Contains(res.Signer, filepath.Base(key)+"@build") || !strings.Contains(res.Signer, "SHA256:") {
			t.Errorf("signer %q", res.Signer)
		}
	}

	bad := func(what string, want error, w Want, data []byte, words ...string) {
		t.Helper()
		_, err := Verify(obj, data, w)
		if !errors.Is(err, want) {
			t.Fatalf("%s: %v, want %v", what, err, want)
		}
		for _, word := range append(words, obj) {
			if !strings.Contains(err.Error(), word) {
				t.Errorf("%s: %q does not say %q", what, err, word)
			}
		}
	}
	// The bytes given are what is checked: another content under the same
	// path (the file replaced after it was signed) fails.
	sign(t, ed, Namespace, obj)
	bad("another file's content", ErrBadSignature, Want{Keys: keys}, []byte("something else"), "release@build", "another file")
	sign(t, other, Namespace, obj)
	bad("a key not listed", ErrUntrusted, Want{Keys: keys}, data, ed+".pub")
	sign(t, ed, "git", obj)
	bad("another namespace", ErrBadSignature, Want{Keys: keys}, data, `"git"`)
	sig := sign(t, ed, Namespace, obj)
	full, _ := os.ReadFile(sig)
	write(t, sig, string(full[:len(full)/2]))
	bad("a truncated signature", ErrBadSignature, Want{Keys: keys}, data, "truncated")
	write(t, sig, string(full[:len(full)-60])+"\n-----END SSH SIGNATURE-----\n")
	bad("a signature cut short inside", ErrBadSignature, Want{Keys: keys}, data)
	os.Remove(sig)
	bad("unsigned, signature required", ErrUnsigned, Want{Keys: keys, Require: true}, data, obj+".sig")
	if _, err := Verify(obj, data, Want{Keys: keys}); err != nil {
		t.Errorf("unsigned, not required: %v", err)
	}

	sum := "5d41402abc4b2a76b9719d911017c592" + "5d41402abc4b2a76b9719d911017c592"
	bad("another digest", ErrDigest, Want{SHA256: sum}, data, sum)
	res, _ := Verify(obj, data, Want{})
	if _, err := Verify(obj, data, Want{SHA256: strings.ToUpper(res.SHA256)}); err != nil {
		t.Errorf("its own digest, in capitals: %v", err)
	}
}

func TestLoadKeysBad(t *testing.T) {
	dir := t.TempDir()
	notKey := filepath.Join(dir, "notkey.pub")
	write(t, notKey, "ssh-ed25519 this-is-not-base64 me\n")
	if _, err := LoadKeys([]string{notKey}); err == nil || !strings.Contains(err.Error(), notKey) || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a key file that is not a key: %v", err)
	}
	priv := newKey(t, dir, "k", "ed25519")
	if _, err := LoadKeys([]string{priv}); err == nil || !strings.Contains(err.Error(), priv) {
		t.Errorf("a private key given as a public one: %v", err)
	}
	empty := filepath.Join(dir, "empty.pub")
	write(t, empty, "# nothing\n")
	if _, err := LoadKeys([]string{empty}); err == nil || !strings.Contains(err.Error(), "no SSH public key") {
		t.Errorf("an empty key file: %v", err)
	}
	signers := filepath.Join(dir, "allowed_signers")
	pub, _ := os.ReadFile(priv + ".pub")
	write(t, signers, "release@example.com "+string(pub))
	if k, err := LoadKeys([]string{signers}); err != nil || k.Len() != 1 {
		t.Errorf("an allowed_signers line: %v", err)
	}
}
