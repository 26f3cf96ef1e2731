#!/usr/bin/env bash
# Fresh-machine test: the README's first command, exactly as the README writes it (the line after the
# marker "<!-- run-command -->", found the way .ci/run finds the test command), run as root in a clone
# of this repository on a minimal Debian 12: debootstrap --variant=minbase plus git and ca-certificates,
# nothing else (no sudo, no compiler, no apt lists). It must end with "final test accuracy NN.NN%".
# This is what a new user does; it fails when setup.sh forgets a package the build needs, when build.sh
# needs something only --tests installs, or when a launch script needs a tool a fresh machine lacks.
#   Repository: the work tree as git sees it (tracked and untracked-but-not-ignored files), committed on
#   HEAD in a scratch repository and cloned into the container from a bundle; in a clean checkout (CI)
#   that is HEAD itself. SBN_FT_REF=HEAD (or any commit) clones that commit instead. The source
#   repository is only read.
#   Container: --network host (apt reaches the host's mirror), the host's proxy variables, no extra
#   capabilities (as in Docker or Kubernetes by default: no SYS_PTRACE).
#   Checks: the command exits 0, prints the final accuracy line, and Open MPI's shared-memory transport
#   does not flood the log with "Read -1, expected ..." (CMA without ptrace rights, README "Running on a
#   cluster").
# Engine, base image and cleanup: tests/container/lib.sh (shared with run_container_test.sh). Exit 0
# pass, 1 fail, 77 skip (not root, no docker/dockerd/debootstrap/git, no overlay filesystem, less than
# 3 GB in TMPDIR, not a git checkout, or no engine started).
# Usage: tests/container/run_fresh_test.sh [SOURCE_DIR]     (ctest -L fresh runs it)
set -euo pipefail

: "${SBN_FT_SRC:=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}"
: "${SBN_FT_REF:=}"                   # clone this commit; empty: the work tree as git sees it
: "${SBN_FT_SHM:=256m}"               # --shm-size of the container (Open MPI's shared-memory transport)
: "${SBN_FT_MARKER:=<!-- run-command -->}"
: "${SBN_CT_DEADLINE:=600}"           # seconds for the whole test; keep below the ctest TIMEOUT
: "${SBN_CT_MIN_FREE_GB:=3}"          # the packages setup.sh installs and the build: about 1.5 GB
# Also SBN_CT_SUITE, SBN_CT_MIRROR, SBN_CT_OWN_DAEMON, TMPDIR: see lib.sh.
ct_name="fresh test"
# shellcheck source=tests/container/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---- preconditions (skip, not fail, where no engine can run) -----------------------------------------
ct_require timeout tar git
git -C "$SBN_FT_SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
  skip "'$SBN_FT_SRC' is not a git checkout: the test clones the repository"
ct_init
base_image="sbn-ft-base:$id"
name="sbn-ft-$id"

# ---- the repository, as a bundle a user's `git clone` can read ---------------------------------------
# A scratch bare repository borrows the source's objects (alternates: read-only) and gets one commit:
# the work tree on top of HEAD, staged through a temporary index; the source's index, refs and object
# store are not written.
repo="$tmp/repo.git"
git init -q --bare "$repo"
src_git=$(git -C "$SBN_FT_SRC" rev-parse --path-format=absolute --git-common-dir)
echo "$src_git/objects" >"$repo/objects/info/alternates"
[ ! -f "$src_git/info/exclude" ] || cp "$src_git/info/exclude" "$repo/info/exclude"
branch=$(git -C "$SBN_FT_SRC" symbolic-ref --short -q HEAD || echo main)
head=$(git -C "$SBN_FT_SRC" rev-parse --verify -q 'HEAD^{commit}' || true)
if [ -n "$SBN_FT_REF" ]; then
  commit=$(git -C "$SBN_FT_SRC" rev-parse --verify -q "$SBN_FT_REF^{commit}") || fail "SBN_FT_REF='$SBN_FT_REF' is not a commit"
  what="$SBN_FT_REF (${commit:0:12})"
else
  gitw=(git --git-dir="$repo" --work-tree="$SBN_FT_SRC")
  if [ -n "$head" ]; then GIT_INDEX_FILE="$tmp/index" "${gitw[@]}" read-tree "$head"; fi
  GIT_INDEX_FILE="$tmp/index" "${gitw[@]}" add -A
  tree=$(GIT_INDEX_FILE="$tmp/index" "${gitw[@]}" write-tree)
  if [ -n "$head" ] && [ "$tree" = "$(git -C "$SBN_FT_SRC" rev-parse "$head^{tree}")" ]; then
    commit=$head
    what="HEAD (${head:0:12}), the work tree is clean"
  else
    changed=$(GIT_INDEX_FILE="$tmp/index" "${gitw[@]}" diff --cached --name-only "${head:-4b825dc642cb6eb9a060e54bf8d69288fbee4904}" | wc -l)
    commit=$(git --git-dir="$repo" -c user.name="fresh test" -c user.email=fresh-test@localhost \
               commit-tree "$tree" ${head:+-p "$head"} -m "fresh test: the work tree of $SBN_FT_SRC")
    what="HEAD (${head:0:12}) + the work tree's changes to $changed files (SBN_FT_REF=HEAD: the commit alone)"
  fi
fi
git --git-dir="$repo" update-ref "refs/heads/$branch" "$commit"
git --git-dir="$repo" symbolic-ref HEAD "refs/heads/$branch"
git --git-dir="$repo" bundle create -q "$tmp/syncbn.bundle" HEAD "refs/heads/$branch" 2>"$tmp/bundle.log" ||
  { cat "$tmp/bundle.log"; fail "git bundle create failed"; }
log "repository: $what; bundle $(du -k "$tmp/syncbn.bundle" | cut -f1) kB"

# The README's first command, from the README of the commit being cloned.
git --git-dir="$repo" show "$commit:README.md" >"$tmp/README.md" || fail "the commit has no README.md"
cmd=$(awk -v m="$SBN_FT_MARKER" 'index($0, m) {getline; while ($0 ~ /^```/) getline; print; exit}' "$tmp/README.md")
[ -n "$cmd" ] || fail "README.md has no command after the marker '$SBN_FT_MARKER'"
log "the README's first command: $cmd"

# ---- engine and base image: minbase + git ca-certificates ---------------------------------------------
ct_start_engine
t_engine=$((SECONDS - t0))
ct_base_image "$base_image" git ca-certificates
t_base=$((SECONDS - t0))

# ---- one container, the clone, the command as written ------------------------------------------------
env_args=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  if [ -n "${!v:-}" ]; then env_args+=(-e "$v"); fi
done
logged "$tmp/run.log" docker run -d --name "$name" --hostname fresh --network host --shm-size "$SBN_FT_SHM" \
  --label "$label" -v "$tmp/syncbn.bundle:/tmp/syncbn.bundle:ro" "${env_args[@]}" "$base_image" sleep infinity ||
  fail "docker run failed"
logged "$tmp/clone.log" docker exec -w /root "$name" git clone -q /tmp/syncbn.bundle syncbn ||
  fail "git clone of the bundle failed"
t_clone=$((SECONDS - t0))
# Each output line gets the seconds since the command started, so the log shows what setup, build and
# training took.
cat >"$tmp/in-container.sh" <<'EOF'
# in-container.sh CONTAINER COMMAND: COMMAND in /root/syncbn of CONTAINER, each line time-stamped.
docker exec -w /root/syncbn "$1" bash -c "$2" 2>&1 |
  { s=$SECONDS; while IFS= read -r l; do printf "[%4ds] %s\n" $((SECONDS - s)) "$l"; done; }
exit "${PIPESTATUS[0]}"
EOF
rc=0
logged "$tmp/first-command.log" bash "$tmp/in-container.sh" "$name" "$cmd" || rc=$?
t_cmd=$((SECONDS - t0))
[ "$rc" -eq 0 ] || fail "the README's first command exited with $rc in a fresh Debian container (log above)"

# ---- checks ------------------------------------------------------------------------------------------
f="$tmp/first-command.log"
grep -E '^\[ *[0-9]+s\] (# setup:|-- syncbn:|# build:|# launch:|\+ |eval |final test accuracy)' "$f" || true
grep -qE '^\[ *[0-9]+s\] final test accuracy [0-9]+\.[0-9]+%' "$f" ||
  fail "no 'final test accuracy NN.NN%' line in the output (tail above with the log in $f)"
cma=$(grep -c 'Read -1, expected' "$f" || true)
[ "$cma" -eq 0 ] ||
  fail "$cma lines of Open MPI's CMA failure ('Read -1, expected ...'): the launch script did not set OMPI_MCA_btl_vader_single_copy_mechanism=none in a container without ptrace rights"
stamp() { grep -m1 -E "^\[ *[0-9]+s\] $1" "$f" | sed -E 's/^\[ *([0-9]+)s\].*/\1/'; }
s_setup=$(stamp '# setup: done'); s_build=$(stamp '# build: .* ready'); s_acc=$(stamp 'final test accuracy')
log "timings: engine ${t_engine}s, base image $((t_base - t_engine))s, container+clone $((t_clone - t_base))s," \
    "first command $((t_cmd - t_clone))s (setup ${s_setup:-?}s, build $(( ${s_build:-0} - ${s_setup:-0} ))s," \
    "main job $(( ${s_acc:-0} - ${s_build:-0} ))s), total $((SECONDS - t0))s"
echo "PASS: fresh test: the README's first command on a minimal Debian 12 ($SBN_CT_SUITE minbase + git ca-certificates)"
