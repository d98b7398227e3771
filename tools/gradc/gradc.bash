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
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(printf '%s\n' "$help" | grep -o -- '--[a-z0-9-]*' | sort -u)" -- "$cur"))
        return
    fi
    if [[ $prev == --* ]]; then
        # The option's value, as the help shows it after the option: choices a|b|c, or a
        # placeholder in capitals (N, X, FILE, DIR); an option without one takes no value.
        local value
        value=$(printf '%s\n' "$help" | awk -v o="$prev" '$1 == o {print $2; exit} $2 == o {print $3; exit}')
        if [[ $value == *"|"* ]]; then
            COMPREPLY=($(compgen -W "${value//|/ }" -- "$cur"))
            return
        fi
        if [[ $value =~ ^[A-Z][A-Z_,]*$ ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
            return
        fi
    fi
    COMPREPLY=($(compgen -f -- "$cur"))
}
complete -o filenames -F _gradc gradc
