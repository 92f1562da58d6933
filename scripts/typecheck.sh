#!/usr/bin/env bash
# mypy (strict, pyproject's [tool.mypy]) over the package as it is installed. pyproject's package-dir
# maps tinker_std.backends, tinker_std.conformance and tinker_std.cookbook to backends/, conformance/
# and cookbook/; mypy has no such mapping, so it would see every `from tinker_std.conformance...` or
# `from tinker_std.backends...` import as Any (and check nothing across it). It checks a tree of links
# with the installed layout instead (.mypy-tree/tinker_std, rebuilt on every run), plus bench/, and
# prints each error with the path of the real file.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.mypy-tree/tinker_std
rm -rf .mypy-tree && mkdir -p "$tree"
for entry in tinker_std/*; do
    [ "$(basename "$entry")" = __pycache__ ] || ln -s "$PWD/$entry" "$tree/"
done
for folder in backends conformance cookbook; do ln -s "$PWD/$folder" "$tree/$folder"; done
status=0
.venv/bin/mypy "$@" | sed -E -e 's#^\.mypy-tree/tinker_std/(backends|conformance|cookbook)/#\1/#' \
    -e 's#^\.mypy-tree/##' || status=$?
exit "$status"
