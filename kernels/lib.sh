# Shell functions shared by kernels/run.sh (`make kernels`) and
# kernels/systemd.sh (`make systemd`): Debian packages fetched into a cache
# that outlives the run, unpacked (dpkg-deb -x), never installed on this
# machine. Sourced, with CACHE set to the cache directory.
#
# APT_OPTS (an array) points apt at a suite of its own (apt_suite) instead of
# this machine's sources; empty means this machine's lists.

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=()
apt_updated=0

apt_update() {
	if [ "$apt_updated" = 0 ]; then
		apt-get "${APT_OPTS[@]}" update -qq
		apt_updated=1
	fi
}

# apt_suite SUITE: from now on, apt looks at Debian's SUITE alone, with lists
# and downloads under $CACHE/apt/SUITE, never at this machine's sources.list.
apt_suite() {
	local dir="$CACHE/apt/$1"
	mkdir -p "$dir/lists/partial" "$dir/archives/partial" "$dir/cache"
	printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian %s main\n' "$1" >"$dir/sources.list"
	APT_OPTS=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
		-o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o "Dir::Cache::archives=$dir/archives"
		-o Dir::State::status=/dev/null -o APT::Architecture=amd64
		-o Acquire::Check-Valid-Until=false)
	apt_updated=0
	if [ -z "$(ls "$dir/lists" | grep -v partial || true)" ]; then
		apt_update
	fi
}

# need_tools CMD=PACKAGE...: installs (on this machine) the packages whose
# command is missing.
need_tools() {
	local need=() t
	for t in "$@"; do
		command -v "${t%%=*}" >/dev/null || need+=("${t#*=}")
	done
	if [ ${#need[@]} -gt 0 ]; then
		echo "installing ${need[*]}" >&2
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
	fi
}

# newest_package PATTERN: the highest version of the package names starting
# with linux- that match the extended regexp PATTERN.
newest_package() {
	local name
	name=$(apt-cache "${APT_OPTS[@]}" pkgnames linux- 2>/dev/null | grep -E "$1" | sort -V | tail -1 || true)
	if [ -z "$name" ]; then
		apt_update
		name=$(apt-cache "${APT_OPTS[@]}" pkgnames linux- | grep -E "$1" | sort -V | tail -1 || true)
	fi
	echo "$name"
}

# fetch PACKAGE [DIR]: download PACKAGE and unpack it into DIR (default
# $CACHE/unpacked/PACKAGE), once; prints DIR. Several packages may be
# unpacked into one DIR (a kernel split into packages).
fetch() {
	local pkg=$1 dir=${2:-$CACHE/unpacked/$1}
	if [ ! -f "$dir/.complete-$pkg" ]; then
		mkdir -p "$CACHE/debs" "$dir"
		(cd "$CACHE/debs" && rm -f "${pkg}"_*.deb && apt-get "${APT_OPTS[@]}" download -qq "$pkg" 2>/dev/null) ||
			{ apt_update; (cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" download -qq "$pkg"); }
		dpkg-deb -x "$CACHE/debs/${pkg}"_*.deb "$dir"
		touch "$dir/.complete-$pkg" "$dir/.complete"
		echo "fetched $pkg" >&2
	fi
	echo "$dir"
}
