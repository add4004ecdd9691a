# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in commands for host-affecting calls while a builder is provisioned (Packer's chroot builder idea).

User roles are written for booted systems: they call ``sysctl -w``, ``mount``, ``modprobe``, ``hostname``,
``systemctl start``, ``iptables -A``, ``reboot``.  A build container or a root filesystem provisioned in an
isolated chroot runs as root but without the privileges to touch a kernel (Docker's default capabilities,
``/proc/sys`` and ``/sys`` read-only), so the real tools fail there with messages that do not say why ("you
must be root to change the host name").  While such a builder is provisioned, bakery installs one POSIX
``sh`` dispatcher, :data:`SCRIPT`, as ``/usr/local/lib/bakery/standin``, with a symbolic link
``/usr/local/sbin/<command>`` to it for each name of :data:`COMMANDS`.  ``/usr/local/sbin`` comes first on
Debian's and Docker's default PATH and is empty in Debian bases, and Ansible modules find their tools with
``get_bin_path`` (PATH first), so by-name calls reach the stand-in.  It acts by the name it was called by:

* the configuration a role writes stays in the image (``/etc/sysctl.d``, ``/etc/fstab``,
  ``/etc/modules-load.d``, enabled units, ``/etc/hostname``); the live change is applied to no kernel;
* read-only calls (``sysctl key``, ``mount`` listing, ``hostname``) go to the real tool, searched in
  ``/usr/sbin /usr/bin /sbin /bin`` (never ``/usr/local/sbin``);
* every note goes to stderr prefixed ``bakery:`` and says what is not applied and what the image gets;
  ``ansible.builtin.reboot`` is refused with a message that says how to skip it.

Limits: calls by absolute path (``/sbin/sysctl``, ``/usr/sbin/service``) reach the real tool and fail for lack
of privilege; a name a base image or a role already has in ``/usr/local/sbin`` is left alone (not stood in
for).  ``ansible.builtin.service`` looks in ``/sbin /usr/sbin /bin /usr/bin`` before PATH, so on a base that
has Debian's ``/usr/sbin/service`` it runs the real one, not the stand-in.

Two ways in and out, with the same result and the same record (``/usr/local/lib/bakery/installed``, one
``dir PATH``, ``link NAME`` or ``file PATH`` a line): :func:`install_into_tree` / :func:`remove_from_tree`
write an unpacked tree on the build host (the root-filesystem builder); :func:`install_command` /
:func:`remove_command` are argv that do it inside a running builder (``docker exec``).  Removal takes exactly
what was installed: the links that still point at the stand-in (a link a role replaced stays), the script,
``/usr/local/lib/bakery``, the stand-in's state (``/var/lib/bakery-standin``, iptables rules), the empty
``/lib/modules/<release>/modules.builtin`` it made, and the directories it created, when empty; the tree is then
byte for byte as before.  The empty ``modules.builtin`` of the running kernel's release lets
``community.general.modprobe`` decide that a module is not loaded (it opens that file when ``/proc/modules``
does not list the module) instead of failing on a missing file.

For tests, the script prefixes ``$BAKERY_STANDIN_ROOT`` to the files it reads and writes (``/etc``, ``/proc/sys``,
the state directory) and searches real tools in ``$BAKERY_STANDIN_REAL_DIRS``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

LIB_DIR = "/usr/local/lib/bakery"
SCRIPT_PATH = LIB_DIR + "/standin"
RECORD_PATH = LIB_DIR + "/installed"
LINK_DIR = "/usr/local/sbin"
STATE_DIR = "/var/lib/bakery-standin"
MODULES_DIR = "/lib/modules"
COMMANDS: tuple[str, ...] = (
    "sysctl", "mount", "umount", "modprobe", "insmod", "rmmod", "systemctl", "service", "hostname",
    "hostnamectl", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore",
    "ip6tables-restore", "reboot", "shutdown", "poweroff", "halt", "telinit",
)  # fmt: skip
_HEREDOC_END = "BAKERY_STANDIN_SCRIPT_END"

SCRIPT = r"""#!/bin/sh
# bakery stand-in for host-affecting commands in an image build (a build container or a root filesystem
# being provisioned).  Installed as /usr/local/lib/bakery/standin, reached through /usr/local/sbin/<command>
# links; acts by the name it is called by.  Removed again before the image is committed.
R=${BAKERY_STANDIN_ROOT:-}
REAL_DIRS=${BAKERY_STANDIN_REAL_DIRS:-/usr/sbin /usr/bin /sbin /bin}
STATE=$R/var/lib/bakery-standin
me=${0##*/}

note() {
    printf 'bakery: %s: %s\n' "$me" "$*" >&2
}

# the real tool of that name outside /usr/local/sbin, for read-only operations
real() {
    for dir in $REAL_DIRS; do
        if [ -f "$dir/$1" ] && [ -x "$dir/$1" ]; then
            printf '%s\n' "$dir/$1"
            return 0
        fi
    done
    return 1
}

trim() {
    printf '%s' "$1" | sed 's/^[[:space:]]*//;s/[[:space:]]*$//'
}

# ---------------------------------------------------------------- sysctl

sysctl_path() {
    case $1 in
    */*) printf '%s/proc/sys/%s' "$R" "${1#/}" ;;
    *) printf '%s/proc/sys/%s' "$R" "$(printf '%s' "$1" | tr . /)" ;;
    esac
}

sysctl_show() { # key value
    if [ -n "$quiet" ]; then
        return 0
    elif [ -n "$values" ]; then
        printf '%s\n' "$2"
    else
        printf '%s = %s\n' "$1" "$2"
    fi
}

sysctl_file() { # path as seen by the image
    if ! [ -r "$R$1" ]; then
        printf 'sysctl: cannot open "%s": No such file or directory\n' "$1" >&2
        status=255
        return 0
    fi
    while IFS= read -r line || [ -n "$line" ]; do
        line=$(trim "$line")
        case $line in '' | '#'* | ';'*) continue ;; *=*) ;; *) continue ;; esac
        line=${line#-}
        sysctl_show "$(trim "${line%%=*}")" "$(trim "${line#*=}")"
    done <"$R$1"
}

sysctl_system() {
    tab=$(printf '\t')
    seen=' '
    list=''
    for dir in /etc/sysctl.d /run/sysctl.d /usr/local/lib/sysctl.d /usr/lib/sysctl.d /lib/sysctl.d; do
        for file in "$R$dir"/*.conf; do
            [ -f "$file" ] || continue
            base=${file##*/}
            case $seen in *" $base "*) continue ;; esac
            seen="$seen$base "
            list="$list$base$tab$dir/$base
"
        done
    done
    printf '%s' "$list" | sort | while IFS="$tab" read -r _base file; do
        [ -n "$quiet" ] || printf '* Applying %s ...\n' "$file"
        sysctl_file "$file"
    done
    if [ -r "$R/etc/sysctl.conf" ]; then
        [ -n "$quiet" ] || printf '* Applying %s ...\n' /etc/sysctl.conf
        sysctl_file /etc/sysctl.conf
    fi
}

do_sysctl() {
    mode=read quiet='' values='' ignore='' names='' all=''
    for arg in "$@"; do
        case $arg in
        -w | --write) mode='write' ;;
        -p* | --load | --load=*) mode=load ;;
        --system) mode=system ;;
        -q | --quiet) quiet=1 ;;
        -n | --values) values=1 ;;
        -e | --ignore) ignore=1 ;;
        -N | --names) names=1 ;;
        -a | -A | -X | --all) all=1 ;;
        -*) ;;
        *=*) [ "$mode" = read ] && mode='write' ;;
        esac
    done
    status=0
    case $mode in
    read)
        if tool=$(real sysctl); then
            exec "$tool" "$@"
        fi
        if [ -n "$all" ]; then
            find "$R/proc/sys" -type f 2>/dev/null | sort | while IFS= read -r path; do
                value=$(cat "$path" 2>/dev/null) || continue
                key=$(printf '%s' "${path#"$R/proc/sys/"}" | tr / .)
                sysctl_show "$key" "$value"
            done
            return 0
        fi
        for arg in "$@"; do
            case $arg in -*) continue ;; esac
            path=$(sysctl_path "$arg")
            if [ -f "$path" ] && value=$(cat "$path" 2>/dev/null); then
                if [ -n "$names" ]; then
                    printf '%s\n' "$arg"
                else
                    sysctl_show "$arg" "$value"
                fi
            elif [ -z "$ignore" ]; then
                printf 'sysctl: cannot stat %s: No such file or directory\n' "${path#"$R"}" >&2
                status=255
            fi
        done
        ;;
    write)
        for arg in "$@"; do
            case $arg in
            -*) ;;
            *=*)
                key=$(trim "${arg%%=*}")
                sysctl_show "$key" "$(trim "${arg#*=}")"
                note "$key is not set: an image build changes no running kernel; the image gets what" \
                    "/etc/sysctl.conf and /etc/sysctl.d/*.conf say, applied at boot"
                ;;
            *)
                printf 'sysctl: "%s" must be of the form name=value\n' "$arg" >&2
                status=255
                ;;
            esac
        done
        ;;
    load)
        files='' next=''
        for arg in "$@"; do
            case $arg in
            -p | --load) next=1 ;;
            -p?*) sysctl_file "${arg#-p}" ;;
            --load=*) sysctl_file "${arg#--load=}" ;;
            -*) ;;
            *) files=1 && sysctl_file "$arg" ;;
            esac
        done
        [ -n "$files" ] || [ -z "$next" ] || sysctl_file /etc/sysctl.conf
        note "nothing is applied: an image build changes no running kernel; the files are the image's" \
            "configuration, applied at boot"
        ;;
    system)
        sysctl_system
        note "nothing is applied: an image build changes no running kernel; the files are the image's" \
            "configuration, applied at boot"
        ;;
    esac
    return "$status"
}

# ---------------------------------------------------------------- mount, umount

do_mount() {
    listing=1 skip=''
    for arg in "$@"; do
        if [ -n "$skip" ]; then
            skip=''
            continue
        fi
        case $arg in
        -t | --types) skip=1 ;;
        -t?* | --types=* | -l | --show-labels | -v | --verbose | -n | --no-mtab) ;;
        -h | --help | -V | --version) ;;
        *) listing='' ;;
        esac
    done
    if [ -n "$listing" ]; then
        if tool=$(real mount); then
            exec "$tool" "$@"
        fi
        while read -r source target type options _rest; do
            printf '%s on %s type %s (%s)\n' "$source" "$target" "$type" "$options"
        done </proc/self/mounts
        return 0
    fi
    note "nothing is mounted or remounted in an image build (mount $*); /etc/fstab is the image's" \
        "configuration, mounted at boot"
}

do_umount() {
    case ${1-} in
    -h | --help | -V | --version)
        if tool=$(real umount); then
            exec "$tool" "$@"
        fi
        printf 'umount (bakery stand-in)\n'
        return 0
        ;;
    esac
    note "nothing is unmounted in an image build (umount $*); /etc/fstab is the image's configuration"
}

# ---------------------------------------------------------------- modprobe, insmod, rmmod

do_modprobe() {
    case ${1-} in
    -V | --version)
        if tool=$(real "$me"); then
            exec "$tool" "$@"
        fi
        printf 'kmod version 30 (bakery stand-in)\n'
        return 0
        ;;
    esac
    note "no kernel module is loaded or unloaded in an image build ($me $*); a booted system loads the" \
        "modules /etc/modules-load.d lists, with the options of /etc/modprobe.d"
}

# ---------------------------------------------------------------- systemctl, service

do_systemctl() {
    if tool=$(real systemctl); then
        SYSTEMD_OFFLINE=1
        export SYSTEMD_OFFLINE
        exec "$tool" "$@"
    fi
    verb='' skip=''
    for arg in "$@"; do
        if [ -n "$skip" ]; then
            skip=''
            continue
        fi
        case $arg in
        -t | -p | -H | -M | -n | -o | -s | --type | --property | --host | --machine | --lines | --output | --signal | --root)
            skip=1
            ;;
        -*) ;;
        *)
            verb=$arg
            break
            ;;
        esac
    done
    case $verb in
    start | stop | restart | reload | try-restart | reload-or-restart | try-reload-or-restart | kill | \
        daemon-reload | daemon-reexec | reset-failed)
        note "systemctl $verb: nothing runs in an image build (and systemd is not installed in this builder)"
        return 0
        ;;
    is-active)
        printf 'inactive\n'
        return 3
        ;;
    esac
    # shellcheck disable=SC2016 # backquotes quote commands in the message
    printf 'bakery: systemd is not installed in this builder; `systemctl %s` needs it (install systemd, %s)\n' \
        "${verb:-list-units}" "or skip with \`when: ansible_service_mgr == 'systemd'\`" >&2
    return 1
}

do_service() {
    case ${1-} in
    --status-all) return 0 ;;
    --version | -h | --help | '')
        printf 'service (bakery stand-in)\n'
        return 0
        ;;
    esac
    name=$1
    case ${2-} in
    start | stop | restart | reload | force-reload | try-restart)
        note "$name $2: services do not run in an image build, nothing is started or stopped; enable the" \
            "service for boot to have it run in the image"
        return 0
        ;;
    status)
        printf '%s is not running (services do not run in an image build)\n' "$name"
        return 3
        ;;
    esac
    note "service $name ${2-}: not run in an image build (services do not run there)"
    return 1
}

# ---------------------------------------------------------------- hostname, hostnamectl

hostname_read() {
    if tool=$(real hostname); then
        exec "$tool" "$@"
    fi
    name=$(uname -n)
    case ${1-} in
    -s | --short) printf '%s\n' "${name%%.*}" ;;
    -d | --domain) case $name in *.*) printf '%s\n' "${name#*.}" ;; *) printf '\n' ;; esac ;;
    *) printf '%s\n' "$name" ;;
    esac
}

do_hostname() {
    for arg in "$@"; do
        case $arg in
        -F | --file | -b | --boot | --file=*) ;;
        -*) continue ;;
        esac
        note "the live host name is not changed in an image build (hostname $*); a booted system takes" \
            "its name from /etc/hostname"
        return 0
    done
    hostname_read "$@"
}

static_hostname() {
    if [ -r "$R/etc/hostname" ]; then
        sed -n '1s/[[:space:]]*$//p' "$R/etc/hostname"
    else
        printf '\n'
    fi
}

do_hostnamectl() {
    static='' transient='' pretty='' verb='' name=''
    for arg in "$@"; do
        case $arg in
        --static) static=1 ;;
        --transient) transient=1 ;;
        --pretty) pretty=1 ;;
        -*) ;;
        *) if [ -z "$verb" ]; then verb=$arg; elif [ -z "$name" ]; then name=$arg; fi ;;
        esac
    done
    case ${verb:-status} in
    status | hostname)
        if [ "$verb" = hostname ] && [ -n "$name" ]; then
            verb=set-hostname
        elif [ -n "$static" ]; then
            static_hostname
            return 0
        elif [ -n "$transient" ]; then
            uname -n
            return 0
        elif [ -n "$pretty" ]; then
            printf '\n'
            return 0
        else
            printf ' Static hostname: %s\n' "$(static_hostname)"
            printf 'Transient hostname: %s (the build host'"'"'s, not changed in an image build)\n' "$(uname -n)"
            return 0
        fi
        ;;
    esac
    case $verb in
    set-hostname)
        if [ -z "$name" ]; then
            printf 'hostnamectl: set-hostname needs a name\n' >&2
            return 1
        fi
        if [ -n "$static" ] || { [ -z "$transient" ] && [ -z "$pretty" ]; }; then
            printf '%s\n' "$name" >"$R/etc/hostname" || return 1
            note "wrote $name to /etc/hostname, the image's name; the live host name is not changed in an" \
                "image build"
        else
            note "the transient or pretty name is not changed in an image build; /etc/hostname is the image's name"
        fi
        return 0
        ;;
    esac
    note "hostnamectl $verb: not available in an image build"
    return 1
}

# ---------------------------------------------------------------- iptables family

ipt_fail() { # status message
    printf '%s: %s\n' "$ipt" "$2" >&2
    exit "$1"
}

ipt_table() { # the state file of a table, made with its built-in chains
    file=$IPT/$1
    [ -f "$file" ] && return 0
    case $1 in
    filter | security) chains='INPUT FORWARD OUTPUT' ;;
    nat) chains='PREROUTING INPUT OUTPUT POSTROUTING' ;;
    mangle) chains='PREROUTING INPUT FORWARD OUTPUT POSTROUTING' ;;
    raw) chains='PREROUTING OUTPUT' ;;
    *) ipt_fail 3 "can't initialize $ipt table '$1': Table does not exist (do you need to insmod?)" ;;
    esac
    mkdir -p "$IPT" || exit 4
    for chain in $chains; do
        printf ':%s ACCEPT\n' "$chain"
    done >"$file"
}

ipt_chain() { # fail unless the chain exists
    grep -q "^:$1 " "$file" || ipt_fail 1 "No chain/target/match by that name."
}

ipt_write() { # replace the table file with the output of a command
    "$@" >"$file.new" && mv "$file.new" "$file"
}

ipt_recorded() {
    note "recorded in the stand-in only: an image build changes no running firewall; rules persist in the" \
        "image only if the role saves them (iptables-save > /etc/iptables/rules.v4)"
}

ipt_version() {
    if tool=$(real "$ipt"); then
        exec "$tool" --version
    fi
    printf '%s v1.8.9 (bakery stand-in)\n' "$ipt"
    exit 0
}

ipt_save() {
    table=''
    while [ $# -gt 0 ]; do
        case $1 in
        -t | --table)
            table=${2-}
            shift
            ;;
        -V | --version) ipt_version ;;
        esac
        shift
    done
    for file in "$IPT"/*; do
        [ -f "$file" ] || continue
        [ -z "$table" ] || [ "${file##*/}" = "$table" ] || continue
        printf '# Generated by %s-save (bakery stand-in)\n*%s\n' "$ipt" "${file##*/}"
        grep '^:' "$file" | sed 's/$/ [0:0]/'
        grep '^-A ' "$file"
        printf 'COMMIT\n'
    done
}

ipt_restore() {
    noflush='' test='' input=''
    for arg in "$@"; do
        case $arg in
        -n | --noflush) noflush=1 ;;
        -t | --test) test=1 ;;
        -V | --version) ipt_version ;;
        -*) ;;
        *) input=$arg ;;
        esac
    done
    mkdir -p "$IPT" || exit 4
    work=$IPT/.restore
    rm -rf "$work" && mkdir "$work" || exit 4
    table='' number=0
    while IFS= read -r line || [ -n "$line" ]; do
        number=$((number + 1))
        case $line in
        '' | '#'*) ;;
        '*'*)
            table=${line#\*}
            if [ -n "$noflush" ] && [ -f "$IPT/$table" ]; then
                cp "$IPT/$table" "$work/$table"
            else
                : >"$work/$table"
            fi
            ;;
        :*) [ -n "$table" ] && printf '%s\n' "${line% \[*\]}" >>"$work/$table" ;;
        '-A '*) [ -n "$table" ] && printf '%s\n' "$line" >>"$work/$table" ;;
        COMMIT) table='' ;;
        *)
            rm -rf "$work"
            ipt_fail 1 "line $number failed: the bakery stand-in restores chains (:) and -A rules only"
            ;;
        esac
    done <"${input:-/dev/stdin}"
    if [ -z "$test" ]; then
        for file in "$work"/*; do
            [ -f "$file" ] && mv "$file" "$IPT/${file##*/}"
        done
        ipt_recorded
    fi
    rm -rf "$work"
}

ipt_quote() { # an argument as iptables-save writes it
    case $1 in
    '' | *[[:space:]]*) printf '"%s"' "$1" ;;
    *) printf '%s' "$1" ;;
    esac
}

do_iptables() {
    table=filter command='' chain='' number='' rule=''
    while [ $# -gt 0 ]; do
        case $1 in
        -t | --table)
            table=${2-}
            shift
            ;;
        -w | --wait) case ${2-} in [0-9]*) shift ;; esac ;;
        -W | --wait-interval) shift ;;
        --wait=* | --wait-interval=* | -n | --numeric | -v | --verbose | -x | --exact | --line-numbers) ;;
        -V | --version) ipt_version ;;
        -A | --append | -C | --check | -D | --delete | -I | --insert | -N | --new-chain | -X | --delete-chain | \
            -F | --flush | -P | --policy | -S | --list-rules | -L | --list | -Z | --zero)
            command=$1
            case ${2-} in -* | '') ;; *)
                chain=$2
                shift
                ;;
            esac
            case $command in
            -I | --insert | -D | --delete)
                case ${2-} in [0-9]*)
                    number=$2
                    shift
                    ;;
                esac
                ;;
            -P | --policy)
                number=${2-}
                shift
                ;;
            esac
            ;;
        *) rule="${rule:+$rule }$(ipt_quote "$1")" ;;
        esac
        shift
    done
    ipt_table "$table"
    line="-A $chain $rule"
    line=${line% }
    case $command in
    -A | --append)
        ipt_chain "$chain"
        printf '%s\n' "$line" >>"$file"
        ipt_recorded
        ;;
    -C | --check)
        ipt_chain "$chain"
        grep -qxF -- "$line" "$file" || ipt_fail 1 "Bad rule (does a matching rule exist in that chain?)."
        ;;
    -I | --insert)
        ipt_chain "$chain"
        # shellcheck disable=SC2016 # an awk program
        ipt_write awk -v prefix="-A $chain " -v at="${number:-1}" -v new="$line" '
            index($0, prefix) == 1 { seen++; if (seen == at) { print new; done = 1 } }
            { print }
            END { if (!done) print new }' "$file"
        ipt_recorded
        ;;
    -D | --delete)
        ipt_chain "$chain"
        if [ -n "$number" ]; then
            # shellcheck disable=SC2016 # an awk program
            match=$(awk -v prefix="-A $chain " -v at="$number" 'index($0, prefix) == 1 && ++seen == at { print; exit }' "$file")
        else
            match=$(grep -xF -m1 -- "$line" "$file")
        fi
        [ -n "$match" ] || ipt_fail 1 "Bad rule (does a matching rule exist in that chain?)."
        # shellcheck disable=SC2016 # an awk program
        ipt_write awk -v gone="$match" '$0 == gone && !done { done = 1; next } { print }' "$file"
        ipt_recorded
        ;;
    -N | --new-chain)
        grep -q "^:$chain " "$file" && ipt_fail 1 "Chain already exists."
        printf ':%s -\n' "$chain" >>"$file"
        ipt_recorded
        ;;
    -X | --delete-chain)
        if [ -n "$chain" ]; then
            ipt_chain "$chain"
            ipt_write grep -vx -- ":$chain -" "$file"
        else
            ipt_write grep -v -- '^:.* -$' "$file"
        fi
        ipt_recorded
        ;;
    -F | --flush)
        if [ -n "$chain" ]; then
            ipt_chain "$chain"
            ipt_write grep -v -- "^-A $chain " "$file"
        else
            ipt_write grep -v -- '^-A ' "$file"
        fi
        ipt_recorded
        ;;
    -P | --policy)
        grep -q "^:$chain [A-Z]" "$file" || ipt_fail 1 "Bad built-in chain name."
        ipt_write sed "s/^:$chain .*/:$chain $number/" "$file"
        ipt_recorded
        ;;
    -S | --list-rules)
        [ -z "$chain" ] || ipt_chain "$chain"
        grep '^:' "$file" | while read -r name policy; do
            [ -z "$chain" ] || [ "${name#:}" = "$chain" ] || continue
            if [ "$policy" = - ]; then printf -- '-N %s\n' "${name#:}"; else printf -- '-P %s %s\n' "${name#:}" "$policy"; fi
        done
        if [ -n "$chain" ]; then grep -- "^-A $chain " "$file"; else grep -- '^-A ' "$file"; fi
        return 0
        ;;
    -L | --list)
        [ -z "$chain" ] || ipt_chain "$chain"
        grep '^:' "$file" | while read -r name policy; do
            name=${name#:}
            [ -z "$chain" ] || [ "$name" = "$chain" ] || continue
            if [ "$policy" = - ]; then printf 'Chain %s (0 references)\n' "$name"; else printf 'Chain %s (policy %s)\n' "$name" "$policy"; fi
            printf 'target     prot opt source               destination\n'
            grep -- "^-A $name " "$file" | cut -d' ' -f3-
            printf '\n'
        done
        return 0
        ;;
    -Z | --zero) ;;
    *) ipt_fail 2 "no command specified (the bakery stand-in knows -A -C -D -I -N -X -F -P -S -L -Z)" ;;
    esac
    return 0
}

# ---------------------------------------------------------------- reboot, shutdown, poweroff, halt, telinit

do_reboot() {
    case "$*" in
    *'Reboot initiated by Ansible'*)
        printf 'bakery: %s; skip it with %s (the image boots fresh anyway)\n' \
            'ansible.builtin.reboot cannot reboot a build container or root-filesystem builder' \
            "\`when: bakery_builder_type == 'vm'\`" >&2
        return 1
        ;;
    esac
    note "nothing is rebooted or shut down in an image build ($me $*); the image boots fresh when it runs"
}

case $me in
sysctl) do_sysctl "$@" ;;
mount) do_mount "$@" ;;
umount) do_umount "$@" ;;
modprobe | insmod | rmmod) do_modprobe "$@" ;;
systemctl) do_systemctl "$@" ;;
service) do_service "$@" ;;
hostname) do_hostname "$@" ;;
hostnamectl) do_hostnamectl "$@" ;;
iptables | ip6tables | iptables-save | ip6tables-save | iptables-restore | ip6tables-restore)
    case $me in ip6*) family=6 ;; *) family=4 ;; esac
    ipt=${me%-save}
    ipt=${ipt%-restore}
    IPT=$STATE/iptables/v$family
    case $me in
    *-save) ipt_save "$@" ;;
    *-restore) ipt_restore "$@" ;;
    *) do_iptables "$@" ;;
    esac
    ;;
reboot | shutdown | poweroff | halt | telinit) do_reboot "$@" ;;
*)
    note "unknown stand-in name (bakery installs it as sysctl, mount, modprobe, systemctl, ...)"
    exit 127
    ;;
esac
"""


def files() -> list[tuple[str, str | None, int, str | None]]:
    """What an install makes: ``(path, content, mode, link target)``; a link has content None."""
    made: list[tuple[str, str | None, int, str | None]] = [(SCRIPT_PATH, SCRIPT, 0o755, None)]
    made.extend((LINK_DIR + "/" + name, None, 0o777, SCRIPT_PATH) for name in COMMANDS)
    return made


# ---------------------------------------------------------------- in an unpacked tree on the build host


def _inside(root: str, path: str) -> str:
    """*path* of the tree at *root* on the host, symbolic links resolved as in a chroot (never outside *root*)."""
    root = os.path.realpath(root)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate) and parts:  # the last component itself is never followed
            hops += 1
            if hops > 40:
                raise BakeryError("too many levels of symbolic links in %s under %s" % (path, root))
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            if target.startswith("/"):
                current = root
            continue
        current = candidate
    return current


def _makedirs(root: str, path: str, record: list[str]) -> None:
    host = _inside(root, path)
    if os.path.isdir(host):
        return
    _makedirs(root, os.path.dirname(path), record)
    os.mkdir(_inside(root, path), 0o755)
    record.append("dir %s" % path)


def install_into_tree(root: str) -> list[str]:
    """Install the stand-ins into the unpacked tree at *root*; returns the command names installed."""
    if os.path.lexists(_inside(root, LIB_DIR)):
        raise BakeryError(
            "%s already exists in %s: stand-ins installed twice, or left by a failed bake" % (LIB_DIR, root)
        )
    record: list[str] = []
    _makedirs(root, LIB_DIR, record)
    script = _inside(root, SCRIPT_PATH)
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(SCRIPT)
    os.chmod(script, 0o755)
    _makedirs(root, LINK_DIR, record)
    names = []
    for name in COMMANDS:
        link = _inside(root, LINK_DIR + "/" + name)
        if os.path.lexists(link):
            continue  # the base's or a role's own: never replaced
        os.symlink(SCRIPT_PATH, link)
        names.append(name)
        record.append("link %s" % name)
    builtin = "%s/%s/modules.builtin" % (MODULES_DIR, os.uname().release)
    if not os.path.lexists(_inside(root, builtin)):
        _makedirs(root, os.path.dirname(builtin), record)
        with open(_inside(root, builtin), "w", encoding="utf-8"):
            pass
        os.chmod(_inside(root, builtin), 0o644)
        record.append("file %s" % builtin)
    with open(_inside(root, RECORD_PATH), "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in record))
    return names


def remove_from_tree(root: str) -> None:
    """Remove what :func:`install_into_tree` (or :func:`install_command`) installed in the tree at *root*."""
    try:
        with open(_inside(root, RECORD_PATH), encoding="utf-8") as handle:
            record = [line.split(" ", 1) for line in handle.read().splitlines() if " " in line]
    except FileNotFoundError:
        return
    for kind, path in record:
        if kind == "link":
            link = _inside(root, LINK_DIR + "/" + path)
            if os.path.islink(link) and os.readlink(link) == SCRIPT_PATH:
                os.unlink(link)
        elif kind == "file":
            host = _inside(root, path)
            info = os.lstat(host) if os.path.lexists(host) else None
            if info is not None and stat.S_ISREG(info.st_mode) and info.st_size == 0:
                os.unlink(host)
    state = _inside(root, STATE_DIR)
    if os.path.isdir(state) and not os.path.islink(state):
        shutil.rmtree(state)
    for kind, path in reversed(record):
        if kind != "dir":
            continue
        host = _inside(root, path)
        if path == LIB_DIR:
            shutil.rmtree(host, ignore_errors=True)
            continue
        try:
            os.rmdir(host)
        except OSError:
            pass  # a role put something there: it stays
    lib = _inside(root, LIB_DIR)
    if os.path.isdir(lib):  # recorded only when created, which an install always does
        shutil.rmtree(lib)


# ---------------------------------------------------------------- inside a running builder

_INSTALL = r"""set -e
lib=%(lib)s
if [ -e "$lib" ] || [ -L "$lib" ]; then
    echo "bakery: $lib already exists: stand-ins installed twice, or left by a failed bake" >&2
    exit 1
fi
record=''
makedirs() {
    [ -d "$1" ] && return 0
    parent=${1%%/*}
    makedirs "${parent:-/}"
    mkdir -m 755 "$1"
    record="${record}dir $1
"
}
makedirs "$lib"
cat >%(script)s <<'%(end)s'
%(body)s%(end)s
chmod 755 %(script)s
makedirs %(links)s
for name in %(names)s; do
    if [ -e "%(links)s/$name" ] || [ -L "%(links)s/$name" ]; then
        continue
    fi
    ln -s %(script)s "%(links)s/$name"
    record="${record}link $name
"
    echo "$name"
done
builtin=%(modules)s/$(uname -r)/modules.builtin
if ! [ -e "$builtin" ] && ! [ -L "$builtin" ]; then
    makedirs "${builtin%%/*}"
    : >"$builtin"
    chmod 644 "$builtin"
    record="${record}file $builtin
"
fi
printf '%%s' "$record" >%(record)s
"""

_REMOVE = r"""set -e
lib=%(lib)s
[ -f %(record)s ] || exit 0
record=$(cat %(record)s)
printf '%%s
' "$record" | while read -r kind path; do
    case $kind in
    link)
        link="%(links)s/$path"
        if [ -L "$link" ] && [ "$(readlink "$link")" = %(script)s ]; then
            rm -f "$link"
        fi
        ;;
    file)
        if [ -f "$path" ] && ! [ -L "$path" ] && ! [ -s "$path" ]; then
            rm -f "$path"
        fi
        ;;
    esac
done
if [ -d %(state)s ] && ! [ -L %(state)s ]; then
    rm -rf %(state)s
fi
printf '%%s
' "$record" | sed -n 's/^dir //p' | sed -n '1!G;h;$p' | while IFS= read -r dir; do
    if [ "$dir" = "$lib" ]; then
        rm -rf "$lib"
    else
        rmdir "$dir" 2>/dev/null || true
    fi
done
rm -rf "$lib"
"""


def _values() -> dict[str, str]:
    return {
        "lib": shlex.quote(LIB_DIR),
        "script": shlex.quote(SCRIPT_PATH),
        "record": shlex.quote(RECORD_PATH),
        "links": shlex.quote(LINK_DIR),
        "state": shlex.quote(STATE_DIR),
        "modules": shlex.quote(MODULES_DIR),
        "names": " ".join(shlex.quote(name) for name in COMMANDS),
        "end": _HEREDOC_END,
        "body": SCRIPT,
    }


def install_command() -> list[str]:
    """argv that installs the stand-ins inside a running builder; it prints the names installed, one a line."""
    return ["/bin/sh", "-c", _INSTALL % _values()]


def remove_command() -> list[str]:
    """argv that removes, inside a running builder, what :func:`install_command` installed."""
    return ["/bin/sh", "-c", _REMOVE % _values()]
