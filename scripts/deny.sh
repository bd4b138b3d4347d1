#!/usr/bin/env bash
# Supply-chain checks with cargo-deny and deny.toml: licenses, banned crates and sources
# (`cargo deny check bans licenses sources`). Exits non-zero on a violation.
#
# Installs cargo-deny from crates.io when absent (`cargo install --locked`, a few minutes on
# 2 cores). Advisories are not checked: the RustSec database is fetched from a git repository,
# which these machines cannot reach, and no package registry carries a copy (deny.toml says
# more). After the check, a negative control runs the same check with one more ban (of ring,
# which warren uses) and fails this script if that check passes: a check that cannot fail is
# not a check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_DENY_VERSION=0.20.2
if [ -d "${HOME:-/root}/.cargo/bin" ]; then PATH="${HOME:-/root}/.cargo/bin:$PATH"; fi

if ! cargo deny --version 2>/dev/null | grep -q " $CARGO_DENY_VERSION"; then
  echo "deny: installing cargo-deny $CARGO_DENY_VERSION from crates.io"
  start=$SECONDS
  cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION"
  echo "deny: cargo-deny built in $((SECONDS - start)) s"
fi

echo "deny: cargo deny check bans licenses sources"
cargo deny --log-level warn --config deny.toml check bans licenses sources

control=$(mktemp --suffix=.toml)
trap 'rm -f "$control"' EXIT
# The same policy plus a ban of a crate warren depends on.
sed 's/^deny = \[$/deny = [\n    { crate = "ring", reason = "negative control of scripts\/deny.sh" },/' deny.toml >"$control"
grep -q 'negative control' "$control" || { echo "deny: cannot build the negative control" >&2; exit 1; }
if cargo deny --log-level error --config "$control" check bans >/dev/null 2>&1; then
  echo "deny: ERROR: the negative control (ring banned) passed: the check cannot fail" >&2
  exit 1
fi
echo "deny: ok (and the negative control failed as it must)"
