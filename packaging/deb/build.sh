#!/usr/bin/env bash
# `make deb`: a Debian package of bpfsup, built with dpkg-deb from
# packaging/deb/control: the static binary in /usr/bin, the units of
# examples/systemd in /usr/lib/systemd/system (pointing at /usr/bin/bpfsup),
# an example configuration and the units' README in /usr/share/doc/bpfsup.
# No maintainer scripts: installing the package enables and starts nothing.
#
#   ./packaging/deb/build.sh        # writes bin/bpfsup_VERSION_amd64.deb
#   LINTIAN=1 ./packaging/deb/build.sh   # and runs lintian on it
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH

# Debian versions start with a digit: 0~gitDATE.COMMIT sorts below any
# release and in commit order.
commit=$(git rev-parse --short=12 HEAD)
date=$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S)
dirty=$(git diff --quiet HEAD -- 2>/dev/null || echo .dirty)
version=${DEB_VERSION:-0~git$date.$commit$dirty}
# Reproducible: file times from the commit, not from the build.
export SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" \
	"$root/usr/share/doc/bpfsup/examples" "$root/usr/share/man/man1" "$root/usr/share/lintian/overrides"

# Static, stripped, without build paths.
CGO_ENABLED=0 go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=$version" -o "$root/usr/bin/bpfsup" ./cmd/bpfsup

for unit in bpfsup@.service bpfsup-hardened@.service bpfsup-fdstore@.service; do
	sed 's|/usr/local/bin/bpfsup|/usr/bin/bpfsup|g' "examples/systemd/$unit" >"$root/usr/lib/systemd/system/$unit"
done
install -m 0644 examples/systemd/fw.toml "$root/usr/share/doc/bpfsup/examples/fw.toml"
install -m 0644 examples/systemd/README.md "$root/usr/share/doc/bpfsup/README.systemd.md"
gzip -9n <packaging/deb/bpfsup.1 >"$root/usr/share/man/man1/bpfsup.1.gz"
install -m 0644 packaging/deb/lintian-overrides "$root/usr/share/lintian/overrides/bpfsup"
install -m 0644 packaging/deb/copyright "$root/usr/share/doc/bpfsup/copyright"
{
	echo "bpfsup ($version) unstable; urgency=medium"
	echo
	echo "  * Built from commit $commit of https://github.com/bpfsup/bpfsup."
	echo
	echo " -- bpfsup maintainers <maintainers@users.noreply.r-seed-e9360ab1.example>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$root/usr/share/doc/bpfsup/changelog.gz"

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@SIZE@|$size|" \
	packaging/deb/control >"$root/DEBIAN/control"
(cd "$root" && find usr -type f -exec md5sum {} + | sort -k2) >"$root/DEBIAN/md5sums"
find "$root" -type d -exec chmod 0755 {} +
find "$root/usr/share" "$root/usr/lib" -type f -exec chmod 0644 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p bin
rm -f bin/bpfsup_*_amd64.deb
out=bin/bpfsup_${version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"
if [ "${LINTIAN:-0}" != 0 ]; then
	command -v lintian >/dev/null || apt-get install -y -qq --no-install-recommends lintian >/dev/null
	lintian --pedantic --info --fail-on error,warning "$out"
	echo "lintian: no error or warning (overridden, with the reason: statically-linked-binary)"
fi
