// Package objsign verifies a BPF object file's bytes before bpfsup parses
// or loads them: against a SHA-256 digest the configuration gives, and
// against a detached SSH signature by one of the public keys the
// configuration trusts.
//
// The signature is the one `ssh-keygen -Y sign` makes, with bpfsup's own
// namespace (Namespace):
//
//	ssh-keygen -Y sign -f release_key -n bpfsup fw.bpf.o   # writes fw.bpf.o.sig
//
// SSH keys are what build machines and their operators have already, and
// ssh-keygen is on every one of them; the namespace keeps a signature made
// for bpfsup from being a valid signature of anything else (a git commit,
// a file signed for another tool) and the other way round. The format is
// OpenSSH's PROTOCOL.sshsig; the keys and signature algorithms are
// golang.org/x/crypto/ssh's (ed25519, ECDSA, RSA with SHA-2, and their
// FIDO variants).
//
// Verify checks the bytes it is given, which the caller then parses and
// loads: a file replaced on disk after the check is never what is loaded.
// It holds no fds and no state.
package objsign

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Namespace is the namespace of bpfsup's signatures (ssh-keygen -n).
const Namespace = "bpfsup"

// SignatureSuffix is appended to an object's path for its signature when
// the configuration names none: where ssh-keygen -Y sign writes it.
const SignatureSuffix = ".sig"

// Errors, each wrapped with the file and what was expected and found.
var (
	// ErrDigest: the object's SHA-256 is not the one configured.
	ErrDigest = errors.New("sha256 mismatch")
	// ErrUnsigned: a signature is required and the object has none.
	ErrUnsigned = errors.New("no signature")
	// ErrUntrusted: the signature is by a key the configuration does not
	// trust.
	ErrUntrusted = errors.New("signed by a key that is not trusted")
	// ErrBadSignature: the signature does not verify against the object's
	// content, or is not an SSH signature for bpfsup.
	ErrBadSignature = errors.New("bad signature")
)

// Want is what an object must satisfy.
type Want struct {
	// SHA256 is the digest the object must have, in hex; "" for any.
	SHA256 string
	// Signature is the path of the object's signature; "" for the
	// object's path with SignatureSuffix, when that exists.
	Signature string
	// Keys are the keys a signature must be by (LoadKeys).
	Keys *Keys
	// Require refuses an object without a signature.
	Require bool
}

// Result is what Verify found.
type Result struct {
	// SHA256 is the object's digest, in hex.
	SHA256 string
	// Signer names the key that signed the object ("" when unsigned): the
	// key's comment, and its fingerprint.
	Signer string
}

// Keys are trusted public keys, read from files of authorized_keys lines
// (what a .pub file holds) or allowed_signers lines (a principal first).
type Keys struct {
	files []string
	keys  []ssh.PublicKey
	names []string
}

// LoadKeys reads the keys of files; a file with no key, or a line that is
// not a key, is an error naming the file and the line.
func LoadKeys(files []string) (*Keys, error) {
	k := &Keys{files: files}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("trusted key file: %w", err)
		}
		n := 0
		for i, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
			if err != nil {
				return nil, fmt.Errorf("trusted key file %s, line %d: not an SSH public key (want a line of a .pub file, \"ssh-ed25519 AAAA... comment\"): %w", f, i+1, err)
			}
			k.keys = append(k.keys, pub)
			k.names = append(k.names, keyName(pub, comment))
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("trusted key file %s: no SSH public key in it", f)
		}
	}
	return k, nil
}

func keyName(pub ssh.PublicKey, comment string) string {
	fp := ssh.FingerprintSHA256(pub)
	if comment == "" {
		return fp
	}
	return comment + " (" + fp + ")"
}

// Len is the number of keys.
func (k *Keys) Len() int {
	if k == nil {
		return 0
	}
	return len(k.keys)
}

// trusted returns the name of pub when it is one of k's.
func (k *Keys) trusted(pub ssh.PublicKey) (string, bool) {
	if k == nil {
		return "", false
	}
	for i, key := range k.keys {
		if bytes.Equal(key.Marshal(), pub.Marshal()) {
			return k.names[i], true
		}
	}
	return "", false
}

// Verify checks data, the content of the object file at path, against w.
func Verify(path string, data []byte, w Want) (Result, error) {
	sum := sha256.Sum256(data)
	res := Result{SHA256: hex.EncodeToString(sum[:])}
	if w.SHA256 != "" && !strings.EqualFold(w.SHA256, res.SHA256) {
		return res, fmt.Errorf("object %s: %w: the configuration expects sha256 %s, the file has %s", path, ErrDigest, strings.ToLower(w.SHA256), res.SHA256)
	}
	sigPath := w.Signature
	if sigPath == "" {
		sigPath = path + SignatureSuffix
	}
	sig, err := os.ReadFile(sigPath)
	switch {
	case errors.Is(err, os.ErrNotExist) && (w.Require || w.Signature != ""):
		return res, fmt.Errorf("object %s: %w: %s does not exist (sign it with ssh-keygen -Y sign -f KEY -n %s %s)", path, ErrUnsigned, sigPath, Namespace, path)
	case errors.Is(err, os.ErrNotExist):
		return res, nil
	case err != nil:
		return res, fmt.Errorf("object %s: signature: %w", path, err)
	}
	if w.Keys.Len() == 0 {
		return res, fmt.Errorf("object %s: signature %s, but no trusted_keys to check it against", path, sigPath)
	}
	res.Signer, err = verifySignature(data, sig, w.Keys)
	if err != nil {
		return res, fmt.Errorf("object %s: signature %s: %w", path, sigPath, err)
	}
	return res, nil
}

// sshSig is the signature blob of PROTOCOL.sshsig, after its magic.
type sshSig struct {
	Version   uint32
	PublicKey []byte
	Namespace string
	Reserved  string
	HashAlg   string
	Signature []byte
}

const sigMagic = "SSHSIG"

// verifySignature checks the armored SSH signature sig of data, and
// returns the name of the trusted key that made it.
func verifySignature(data, sig []byte, keys *Keys) (string, error) {
	block, _ := pem.Decode(sig)
	if block == nil || block.Type != "SSH SIGNATURE" {
		return "", fmt.Errorf("%w: not an SSH signature (no -----BEGIN SSH SIGNATURE----- block; truncated?)", ErrBadSignature)
	}
	blob, ok := bytes.CutPrefix(block.Bytes, []byte(sigMagic))
	if !ok {
		return "", fmt.Errorf("%w: not an SSH signature (no %s magic)", ErrBadSignature, sigMagic)
	}
	var s sshSig
	if err := ssh.Unmarshal(blob, &s); err != nil {
		return "", fmt.Errorf("%w: malformed (truncated?): %v", ErrBadSignature, err)
	}
	if s.Version != 1 {
		return "", fmt.Errorf("%w: version %d, want 1", ErrBadSignature, s.Version)
	}
	pub, err := ssh.ParsePublicKey(s.PublicKey)
	if err != nil {
		return "", fmt.Errorf("%w: its public key: %v", ErrBadSignature, err)
	}
	if s.Namespace != Namespace {
		return "", fmt.Errorf("%w: made for namespace %q, not %q (ssh-keygen -Y sign -n %s)", ErrBadSignature, s.Namespace, Namespace, Namespace)
	}
	name, ok := keys.trusted(pub)
	if !ok {
		return "", fmt.Errorf("%w: key %s is not in %s", ErrUntrusted, ssh.FingerprintSHA256(pub), strings.Join(keys.files, ", "))
	}
	var digest []byte
	switch s.HashAlg {
	case "sha512":
		h := sha512.Sum512(data)
		digest = h[:]
	case "sha256":
		h := sha256.Sum256(data)
		digest = h[:]
	default:
		return "", fmt.Errorf("%w: hash algorithm %q, want sha512 or sha256", ErrBadSignature, s.HashAlg)
	}
	var sg ssh.Signature
	if err := ssh.Unmarshal(s.Signature, &sg); err != nil {
		return "", fmt.Errorf("%w: its signature field: %v", ErrBadSignature, err)
	}
	signed := append([]byte(sigMagic), ssh.Marshal(struct {
		Namespace, Reserved, HashAlg string
		Digest                       []byte
	}{s.Namespace, s.Reserved, s.HashAlg, digest})...)
	if err := pub.Verify(signed, &sg); err != nil {
		return "", fmt.Errorf("%w: by %s, but not of this content (a signature of another file, or the file changed since it was signed): %v", ErrBadSignature, name, err)
	}
	return name, nil
}
