#!/usr/bin/env bash
# The documentation's own checks, so that a newcomer's first page stays short and every link
# in it leads somewhere:
#   1. README.md is at most 20480 bytes (the details live in config/, tests/ and cross/);
#   2. every relative link in every tracked Markdown file names a tracked file (or a folder
#      holding one), and a link's #anchor names a heading of the file it points to;
#   3. no tracked file outside tests/data and tests/fixtures cites the reference documents
#      that were written for the developers and are not part of the repository: the repo has
#      to stand on its own;
#   4. no merge conflict markers; 5. every configuration key is in config/README.md.
# Every problem is listed, then the script fails. Needs git, GNU coreutils, sed and grep.
#
#   tests/docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Unicode-aware [:alnum:] for heading anchors, when the machine has such a locale.
if locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then
    export LC_ALL=C.UTF-8
fi

readme_limit=20480
failures=0
fail() {
    echo "docs: $*" >&2
    failures=$((failures + 1))
}

# 1. The README's size.
readme_bytes=$(wc -c <README.md)
if ((readme_bytes > readme_limit)); then
    fail "README.md is ${readme_bytes} bytes, over the limit of ${readme_limit}: move details to config/README.md, tests/README.md or cross/README.md"
else
    echo "docs: README.md is ${readme_bytes} bytes (limit ${readme_limit})"
fi

# 2. Relative links.
declare -A tracked=() tracked_dir=()
while IFS= read -r f; do
    tracked["$f"]=1
    d=$f
    while [[ $d == */* ]]; do
        d=${d%/*}
        tracked_dir["$d"]=1
    done
done < <(git ls-files)

# A Markdown file's text outside fenced code blocks, with inline code spans removed: links
# and headings shown as code are examples, not links.
outside_fences() {
    sed -E '/^[[:space:]]*(```|~~~)/,/^[[:space:]]*(```|~~~)/d' "$1"
}
prose() {
    outside_fences "$1" | sed -E 's/`[^`]*`//g'
}

# The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as
# hyphens, repeats numbered.
anchors() {
    outside_fences "$1" | sed -nE 's/^#{1,6}[[:space:]]+(.*[^[:space:]#])[[:space:]#]*$/\1/p' |
        sed -E 's/\[([^]]*)\]\([^)]*\)/\1/g' | tr '[:upper:]' '[:lower:]' |
        sed -E 's/[^[:alnum:] _-]//g; s/ /-/g' |
        awk '{ n = seen[$0]++; print (n ? $0 "-" n : $0) }'
}

declare -A anchor_cache=()
has_anchor() { # FILE ANCHOR
    if [[ -z ${anchor_cache["$1"]+set} ]]; then
        anchor_cache["$1"]=$'\n'"$(anchors "$1")"$'\n'
    fi
    [[ ${anchor_cache["$1"]} == *$'\n'"$2"$'\n'* ]]
}

md_files=0
links=0
while IFS= read -r md; do
    md_files=$((md_files + 1))
    dir=$(dirname "$md")
    while IFS= read -r target; do
        [[ -n $target ]] || continue
        case $target in
        http://* | https://* | mailto:*) continue ;;
        esac
        links=$((links + 1))
        path=${target%%#*}
        anchor=""
        [[ $target == *#* ]] && anchor=${target#*#}
        if [[ -z $path ]]; then
            resolved=$md
        elif [[ $path == /* ]]; then
            resolved=$(realpath -m --relative-to=. "./${path#/}")
        else
            resolved=$(realpath -m --relative-to=. "$dir/$path")
        fi
        resolved=${resolved%/}
        if [[ -z ${tracked["$resolved"]+x} && -z ${tracked_dir["$resolved"]+x} ]]; then
            fail "$md: link ($target) does not resolve to a tracked file ($resolved)"
            continue
        fi
        if [[ -n $anchor && $resolved == *.md && -n ${tracked["$resolved"]+x} ]]; then
            has_anchor "$resolved" "$anchor" ||
                fail "$md: link ($target): $resolved has no heading with the anchor #$anchor"
        fi
    done < <(prose "$md" |
        grep -oE '\]\([^)[:space:]]+([[:space:]]+"[^"]*")?\)|^[[:space:]]*\[[^]]+\]:[[:space:]]+[^[:space:]]+' |
        sed -E 's/^\]\(([^)[:space:]]+).*$/\1/; s/^[[:space:]]*\[[^]]+\]:[[:space:]]+//')
done < <(git ls-files '*.md')
echo "docs: ${links} relative links and anchors in ${md_files} tracked Markdown files checked"

# 3. Citations of documents that are not in the repository. The patterns are written so that
# this file does not match them itself.
cited=$(git grep -n -I -e '\.\./shared' -e '/work/share[d]' -e 'CONFIG\.md' -e 'consul-mesh\.md' \
    -- . ':!tests/data' ':!tests/fixtures' || true)
if [[ -n $cited ]]; then
    count=$(wc -l <<<"$cited")
    fail "${count} lines cite documents that are not in the repository (the shared reference docs); write what the reader needs in the repo's own words instead:"
    sed 's/^/    /' <<<"$cited" >&2
else
    echo "docs: no tracked file outside tests/data and tests/fixtures cites the shared reference documents"
fi

# 4. Merge conflict markers left in any tracked text file (a merge resolved too quickly).
markers=$(git grep -n -I -E '^(<{7} |>{7} |={7}$)' -- . ':!tests/data' ':!tests/fixtures' || true)
if [[ -n $markers ]]; then
    fail "$(wc -l <<<"$markers") lines hold merge conflict markers:"
    sed 's/^/    /' <<<"$markers" >&2
else
    echo "docs: no merge conflict markers"
fi

# 5. Every configuration key the reader asks for by name (a literal passed to one of
# src/config/fields.rs' readers) appears as code in config/README.md, the key reference: a key
# added to the reader without a line in the reference fails here.
keys=$(git grep -h -o -E '\.(str|required_str|int|millis|str_list|has|bool|list|str_map|table|tables)\("[a-z_0-9]+"' \
    -- src/config | sed -E 's/.*\("//; s/"$//' | sort -u)
undocumented=()
for key in $keys; do
    grep -q -E "\`[^\`]*\b${key}\b[^\`]*\`" config/README.md || undocumented+=("$key")
done
if ((${#undocumented[@]})); then
    fail "config/README.md does not document these keys the configuration reader takes: ${undocumented[*]}"
else
    echo "docs: all $(wc -w <<<"$keys") configuration keys read in src/config are in config/README.md"
fi

if ((failures)); then
    echo "docs: ${failures} problem(s)" >&2
    exit 1
fi
echo "docs: ok"
