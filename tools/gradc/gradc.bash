# bash completion for gradc, installed by cmake --install into share/bash-completion/completions.
# The commands and each command's options come from gradc itself (gradc --help, gradc help
# COMMAND), so they never go stale; values complete as files, or from the choices the help
# gives after the option (--emit, --format, --optimizer, ...).
_gradc() {
    local cur prev cmd
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    cmd=${COMP_WORDS[1]}
    if [[ $COMP_CWORD -eq 1 ]]; then
        local commands
        commands=$("${COMP_WORDS[0]}" --help 2>/dev/null | awk '/^commands:/ {on = 1; next} on && /^  [a-z]/ {print $1}')
        COMPREPLY=($(compgen -W "$commands help --help --version" -- "$cur"))
        return
    fi
    if [[ $cmd == help ]]; then
        COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" --help 2>/dev/null | awk '/^commands:/ {on = 1; next} on && /^  [a-z]/ {print $1}')" -- "$cur"))
        return
    fi
    local help
    help=$("${COMP_WORDS[0]}" help "$cmd" 2>/dev/null)
    if [[ $prev == --* ]]; then
        # The option's value: its choices when the help lists them as a|b|c, else a file.
        local value
        value=$(printf '%s\n' "$help" | awk -v o="$prev" '{for (i = 1; i < NF; ++i) if ($i == o || $i == o ",") {print $(i + 1); exit}}')
        if [[ $value == *"|"* ]]; then
            COMPREPLY=($(compgen -W "${value//|/ }" -- "$cur"))
            return
        fi
        if [[ -n $value ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
            return
        fi
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(printf '%s\n' "$help" | grep -o -- '--[a-z0-9-]*' | sort -u)" -- "$cur"))
        return
    fi
    COMPREPLY=($(compgen -f -- "$cur"))
}
complete -o filenames -F _gradc gradc
