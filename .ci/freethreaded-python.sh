#!/usr/bin/env bash
# Make sure a free-threaded CPython 3.13 (python3.13t, built --disable-gil)
# exists, and print the path of its executable as the last line on stdout.
# Everything else goes to stderr, so callers can use:
#
#     PY313T=$(.ci/freethreaded-python.sh | tail -n 1)
#
# CPython is built from Debian's python3.13 source package (suite trixie),
# fetched with apt-get through a private sources list, so the machine's own
# apt configuration and package lists are left untouched.  The upstream
# source is built as released, plus those of Debian's patches that are
# backports of upstream fixes (security and crash fixes, some of them in the
# free-threaded dict code); Debian's integration patches (dist-packages
# layout, disabled ensurepip, multiarch paths) are not applied, because they
# only make sense for Debian's own /usr install.
#
# The result lives in a cache outside the clone, reused by later runs:
#     ${CBUFFER_FT_CACHE:-$HOME/.cache/cbuffer-freethreaded}/cpython-3.13t
# A build is done in a temporary directory, installed into a staging tree,
# checked, moved into place and only then stamped complete; a run that finds
# no stamp (or a stamp for another recipe) rebuilds from scratch.
#
# Environment:
#   CBUFFER_FT_CACHE    cache directory (default above)
#   CBUFFER_FT_APT_URI  Debian mirror to fetch the source from; by default the
#                       one this machine's apt configuration already uses
#
# Needs: apt-get, dpkg-source (dpkg-dev), a C compiler, make, patch, xz, and
# the zlib and OpenSSL headers (zlib1g-dev, libssl-dev): pip inside a venv of
# the new interpreter reaches its index over HTTPS and unpacks wheels.
# libffi-dev, libbz2-dev, liblzma-dev, libsqlite3-dev, libreadline-dev and
# uuid-dev are used when present.  Nothing is installed by this script.
set -euo pipefail

readonly SUITE=trixie
readonly SRC_PKG=python3.13
readonly CONFIGURE_ARGS=(--disable-gil --with-ensurepip=no)
# Bump when the way the interpreter is built changes: a stamp written for
# another recipe makes the next run rebuild.
readonly RECIPE="recipe 1: $SRC_PKG from $SUITE, upstream + upstream backports, ${CONFIGURE_ARGS[*]}"

log() { printf '[freethreaded-python] %s\n' "$*" >&2; }
die() {
    printf '[freethreaded-python] ERROR: %s\n' "$*" >&2
    exit 1
}

unset PYTHONHOME PYTHONPATH PYTHONSTARTUP PYTHONUSERBASE

cache=${CBUFFER_FT_CACHE:-${HOME:?HOME is not set: set CBUFFER_FT_CACHE}/.cache/cbuffer-freethreaded}
mkdir -p "$cache" || die "cannot create cache directory $cache"
cache=$(cd "$cache" && pwd -P)
prefix=$cache/cpython-3.13t
python=$prefix/bin/python3.13t
stamp=$prefix/.build-complete

# The cache must not sit inside the clone: git would see it and pytest would
# walk into it.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
case "$cache/" in
    "$repo"/*) die "cache $cache is inside the repository $repo; set CBUFFER_FT_CACHE to a directory outside it" ;;
esac

is_complete() {
    [[ -x $python && -f $stamp ]] || return 1
    [[ $(head -n 1 "$stamp") == "$RECIPE" ]] || return 1
    "$python" -c 'import sys; assert not sys._is_gil_enabled()' >/dev/null 2>&1
}

if is_complete; then
    printf '%s\n' "$python"
    exit 0
fi

# Two runs sharing one cache (parallel CI jobs) must not build into the same
# prefix at once; the second waits, then finds the first one's result.
locked=false
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache/.lock"
    flock 9
    locked=true
    if is_complete; then
        printf '%s\n' "$python"
        exit 0
    fi
else
    log "flock not found: not guarding against a concurrent build in $cache"
fi

# ---- prerequisites: fail before a long build, naming what is missing ----
missing_tools=()
for tool in apt-get dpkg-source cc make patch xz tar; do
    command -v "$tool" >/dev/null 2>&1 || missing_tools+=("$tool")
done
if ((${#missing_tools[@]})); then
    hint=""
    [[ " ${missing_tools[*]} " == *" dpkg-source "* ]] &&
        hint=" dpkg-source comes with dpkg-dev (apt-get install dpkg-dev), which apt-get source needs to unpack a source package."
    die "missing tools: ${missing_tools[*]}.$hint Debian packages: apt-get install build-essential dpkg-dev patch xz-utils"
fi

missing_headers=()
have_header() { printf '#include <%s>\n' "$1" | cc -E -x c - >/dev/null 2>&1; }
have_header zlib.h || missing_headers+=("zlib.h (zlib1g-dev)")
have_header openssl/ssl.h || missing_headers+=("openssl/ssl.h (libssl-dev)")
if ((${#missing_headers[@]})); then
    die "missing C headers: ${missing_headers[*]}; without them the interpreter has no zlib/ssl and pip cannot install packages. Install the -dev packages named."
fi
have_header ffi.h || log "note: ffi.h (libffi-dev) not found: the interpreter will have no ctypes"

# ---- the Debian mirror this machine already uses ----
# First stanza of deb822 sources whose suites include a plain release name
# (not -security, -updates or -backports); its first URI.
mirror_from_deb822() {
    awk '
        function flush() {
            if (types ~ /(^| )deb(-src)?( |$)/ && tolower(enabled) != "no" && uri != "") {
                n = split(suites, s, " ")
                for (i = 1; i <= n; i++)
                    if (s[i] !~ /-/ && s[i] !~ /\//) { print uri; found = 1; exit }
            }
            types = ""; suites = ""; uri = ""; enabled = ""; key = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/ { if (key == "uris" && uri == "") { uri = $1 }
                   else if (key == "suites") { suites = suites " " $0 }
                   next }
        {
            key = tolower($1); sub(/:$/, "", key)
            val = $0; sub(/^[^:]*:[ \t]*/, "", val)
            if (key == "types") types = val
            else if (key == "uris") { split(val, u, " "); uri = u[1] }
            else if (key == "suites") suites = val
            else if (key == "enabled") enabled = val
        }
        END { if (!found) flush() }
    ' "$1"
}
mirror_from_list() {
    awk '
        /^[ \t]*deb(-src)?[ \t]/ {
            i = 2
            if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
            if ($(i + 1) !~ /-/ && $(i + 1) !~ /\//) { print $i; exit }
        }
    ' "$1"
}

uri=${CBUFFER_FT_APT_URI:-}
if [[ -z $uri && -r /etc/apt/sources.list.d/debian.sources ]]; then
    uri=$(mirror_from_deb822 /etc/apt/sources.list.d/debian.sources)
fi
if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(mirror_from_list /etc/apt/sources.list)
fi
[[ -n $uri ]] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; set CBUFFER_FT_APT_URI"

# A run that was killed leaves its build tree behind; with the lock held, no
# other run is using one.
if [[ $locked == true ]]; then
    rm -rf "$cache"/build.??????
fi
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'log "interrupted; nothing was installed"; exit 130' INT
trap 'log "terminated; nothing was installed"; exit 143' TERM
logfile=$cache/build.log
: >"$logfile"

# ---- fetch the source package through a private apt configuration ----
aptdir=$work/apt
mkdir -p "$aptdir/lists/partial"
printf 'deb-src [trusted=yes] %s %s main\n' "$uri" "$SUITE" >"$aptdir/sources.list"
apt_opts=(
    -o "Dir::Etc::sourcelist=$aptdir/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$aptdir/lists"
    # keep apt from rewriting the system's package cache from these lists
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
)
# apt's download sandbox user cannot write into a private temp directory
((EUID == 0)) && apt_opts+=(-o "APT::Sandbox::User=root")

# Run a command in another directory, leaving this shell's directory alone.
in_dir() {
    local dir=$1
    shift
    (cd "$dir" && "$@")
}

# Run a step with its output in the build log; on failure show the log's tail.
step() {
    local what=$1
    shift
    log "$what"
    if ! "$@" >>"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2
        die "$what failed (full log: $logfile)"
    fi
}

# --error-on=any: a mirror that cannot be reached is an error, not a warning
step "apt-get update ($SUITE sources from $uri)" apt-get "${apt_opts[@]}" --error-on=any update
version=$(apt-cache "${apt_opts[@]}" showsrc "$SRC_PKG" 2>>"$logfile" |
    awk '/^Version:/ && v == "" { v = $2 } END { print v }') || true
[[ -n $version ]] || die "no source package $SRC_PKG in $uri $SUITE (see $logfile)"

mkdir "$work/dl"
step "apt-get source $SRC_PKG=$version" \
    in_dir "$work/dl" apt-get "${apt_opts[@]}" source --download-only "$SRC_PKG=$version"
dscs=("$work/dl/${SRC_PKG}_"*.dsc)
dsc=${dscs[0]}
[[ -f $dsc ]] || die "apt-get source left no .dsc in $work/dl"
# Unpack without Debian's patches; the ones wanted are applied below.
step "unpack $(basename "$dsc")" dpkg-source --skip-patches -x "$dsc" "$work/src"

src=$work/src
skipped=()
applied=0
series=$src/debian/patches/series
[[ -f $series ]] || log "warning: $(basename "$dsc") has no debian/patches/series; building the upstream source alone"
[[ -f $series ]] && while read -r p; do
    [[ -z $p || $p == \#* ]] && continue
    f=$src/debian/patches/$p
    [[ -f $f ]] || continue
    # an upstream backport says so in its header: "Origin: upstream", or a
    # git-format-patch subject naming the 3.13 branch
    if awk '/^(---|\+\+\+|diff |Index:)/ { exit }
            /^Origin: *(upstream|backport)/ || /^Subject: \[PATCH[^]]*\] \[3\.13\]/ { found = 1 }
            END { exit !found }' "$f"; then
        if in_dir "$src" patch -p1 --forward --batch --dry-run -i "$f" >>"$logfile" 2>&1; then
            in_dir "$src" patch -p1 --forward --batch --no-backup-if-mismatch -i "$f" >>"$logfile" 2>&1 ||
                die "patch $p failed after a clean dry run (see $logfile)"
            applied=$((applied + 1))
        else
            skipped+=("$p")
        fi
    fi
done <"$series"
log "applied $applied upstream-backport patches from Debian $version"
((${#skipped[@]} == 0)) || log "warning: these patches do not apply to the upstream source and were left out: ${skipped[*]}"

# ---- build, stage, check, move into place, stamp ----
mkdir "$work/build"
jobs=$(nproc 2>/dev/null || echo 2)
step "configure ${CONFIGURE_ARGS[*]} --prefix=$prefix" \
    in_dir "$work/build" "$src/configure" "${CONFIGURE_ARGS[@]}" "--prefix=$prefix"
step "make -j$jobs (a few minutes)" make -C "$work/build" -j"$jobs"
# Modules the build could not make; ssl and zlib are checked for below.
sed -n '/^The necessary bits to build these optional modules were not found:/,/^$/p;
        /^Failed to build these modules:/,/^$/p;
        /^Following modules built successfully but were removed/,/^$/p' "$logfile" >&2
step "make install (staged)" make -C "$work/build" install DESTDIR="$work/stage"

staged=$work/stage$prefix
[[ -x $staged/bin/python3.13t ]] || die "make install produced no $staged/bin/python3.13t"
check='import sys, sysconfig, zlib, ssl, venv, ensurepip
assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1, "not a --disable-gil build"
assert not sys._is_gil_enabled(), "the GIL is enabled"'
if ! "$staged/bin/python3.13t" -c "$check" >&2; then
    die "the built interpreter fails its check (missing zlib or ssl? install zlib1g-dev and libssl-dev)"
fi

log "installing into $prefix"
rm -rf "$prefix"
mv "$staged" "$prefix"
{
    printf '%s\n' "$RECIPE"
    printf 'debian source: %s %s from %s %s\n' "$SRC_PKG" "$version" "$uri" "$SUITE"
    printf 'patches applied: %s; left out: %s\n' "$applied" "${skipped[*]:-none}"
    printf 'built: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$stamp.tmp"
mv "$stamp.tmp" "$stamp"

is_complete || die "$python does not run with the GIL disabled after install"
log "$("$python" -VV)"
printf '%s\n' "$python"
