#!/bin/bash
# haagent's test stand-in for the Replicated installer (https://get.replicated.com/docker,
# template install_scripts/templates/replicated-2.0.sh in replicatedhq/replicated-installer).
# Our own small script, not Replicated's code. It models what haagent relies on:
#  - the argument `case` (both spellings, artifactory-auth one only); an unknown parameter
#    prints an error and exits 1;
#  - the public address: without public-address / no-public-address it makes a plain IMDSv1
#    request (here to IMDSV1URL, the tests' IMDSv2-only mock, so it fails as on an instance
#    that requires IMDSv2) and then prompts "Service IP address" (120 s on /dev/tty);
#  - the proxy: http-proxy=, else replicated.conf's "HttpProxy" (read with grep as the real
#    readReplicatedConf does), else HTTP_PROXY, http_proxy, HTTPS_PROXY, https_proxy from the
#    environment (printing "will use the proxy at '...'"), else, without no-proxy, a prompt;
#    NO_PROXY in the environment is ignored, additional-no-proxy= is added to its own list
#    (recorded);
#  - Docker: without no-docker, an installed Docker of another minor version than the
#    recommended one makes it ask "Do you want to proceed anyway?" (default no) and exit 0
#    having installed nothing (the real script asks so of a newer one; an older one it
#    upgrades, which the stand-in does not model); with
#    no-docker it only requires a docker command;
#  - the address: PRIVATE_ADDRESS (local-address) written to /etc/default/replicated and, with
#    the operator, DAEMON_ENDPOINT/DAEMON_HOST/PRIVATE_ADDRESS to /etc/default/replicated-operator
#    (write_replicated_configuration), which the units read as EnvironmentFile= when they start;
#  - the install: under systemd, the user replicated created with `useradd -g docker`, and the
#    units replicated, replicated-ui (not with disable-replicated-ui: the real
#    write_systemd_services writes none) and replicated-operator (not with no-operator) run as
#    User=replicated Group=docker; the replicated unit reads the licence and settings.conf that
#    /etc/replicated.conf names and fails when it cannot. replicatedctl answers
#    `app status inspect` only while that unit runs. Without systemd (haagent --root tests)
#    it writes replicatedctl under ROOTDIR and nothing else; that one answers an empty list
#    (`[]`, as the real daemon does before it has activated the licence) until the install
#    ends with the "licence activates" line, which a test may drop.
# RECDIR, ROOTDIR, IMDSV1URL and STANDIN_DELAY are replaced by the tests.
set -e
REC="RECDIR"
ROOT="ROOTDIR"
PINNED_DOCKER_VERSION="18.09.9"
READ_TIMEOUT="-t 20"
mkdir -p "$REC"
echo run >> "$REC/runs"
echo 'installer started'
printf '%s\n' "$@" > "$REC/args"
env > "$REC/env"
cat > "$REC/stdin" || true
if read -r -t 1 _ < /dev/tty 2>/dev/null; then echo tty > "$REC/tty"; else echo no-tty > "$REC/tty"; fi
echo "a warning on stderr" >&2
export PATH="$ROOT/usr/local/bin:$ROOT/usr/bin:$PATH"

# The timeout is deliberately unquoted ("-t 20" is two words), as in the real prompt.sh.
# shellcheck disable=SC2086,SC2162
promptTimeout() {
    echo "$PROMPT_QUESTION" >> "$REC/prompts"
    set +e
    read ${1:-$READ_TIMEOUT} PROMPT_RESULT < /dev/tty
    set -e
}
confirmN() {
    printf "(y/N) "
    promptTimeout
    [ "$PROMPT_RESULT" = "y" ] || [ "$PROMPT_RESULT" = "Y" ]
}

while [ "$1" != "" ]; do
    _param="$(echo "$1" | cut -d= -f1)"
    _value="$(echo "$1" | grep '=' | cut -d= -f2-)"
    case $_param in
        http-proxy|http_proxy)
            PROXY_ADDRESS="$_value"
            ;;
        local-address|local_address|private-address|private_address)
            PRIVATE_ADDRESS="$_value"
            ;;
        public-address|public_address)
            PUBLIC_ADDRESS="$_value"
            ;;
        no-public-address|no_public_address)
            NO_PUBLIC_ADDRESS=1
            ;;
        no-docker|no_docker)
            SKIP_DOCKER_INSTALL=1
            ;;
        install-docker-only|install_docker_only)
            ONLY_INSTALL_DOCKER=1
            ;;
        no-proxy|no_proxy)
            NO_PROXY=1
            ;;
        additional-no-proxy|additional_no_proxy)
            ADDITIONAL_NO_PROXY="${ADDITIONAL_NO_PROXY:+$ADDITIONAL_NO_PROXY,}$_value"
            ;;
        release-sequence|release_sequence)
            RELEASE_SEQUENCE="$_value"
            ;;
        no-operator|no_operator)
            SKIP_OPERATOR_INSTALL=1
            ;;
        disable-replicated-ui|disable_replicated_ui)
            DISABLE_REPLICATED_UI=1
            ;;
        is-migration|is_migration|airgap|no-auto|no_auto|daemon-token|daemon_token|tags|docker-version|docker_version|ui-bind-port|ui_bind_port|registry-advertise-address|registry_advertise_address|release-patch-sequence|release_patch_sequence|skip-pull|skip_pull|bypass-storagedriver-warnings|bypass_storagedriver_warnings|log-level|log_level|selinux-replicated-domain|selinux_replicated_domain|fast-timeouts|fast_timeouts|force-replicated-downgrade|force_replicated_downgrade|skip-preflights|skip_preflights|prompt-on-preflight-warnings|prompt_on_preflight_warnings|ignore-preflights|ignore_preflights|no-ce-on-ee|no_ce_on_ee|hard-fail-on-loopback|hard_fail_on_loopback|bypass-firewalld-warning|bypass_firewalld_warning|hard-fail-on-firewalld|hard_fail_on_firewalld|artifactory-address|artifactory_address|artifactory-access-method|artifactory_access_method|artifactory-docker-repo-key|artifactory_docker_repo_key|artifactory-quay-repo-key|artifactory_quay_repo_key|artifactory-auth|registry-address-override|registry_address_override|registry-path-prefix|registry_path_prefix|disable-replicated-host-networking|disable_replicated_host_networking)
            ;;
        *)
            echo >&2 "Error: unknown parameter \"$_param\""
            exit 1
            ;;
    esac
    shift
done

sleep STANDIN_DELAY

if [ "$ONLY_INSTALL_DOCKER" = "1" ]; then
    echo "Docker is installed; install-docker-only: not installing Replicated"
    exit 0
fi

printf "Determining local address\n"
printf "The installer will use local address '%s' (from parameter)\n" "$PRIVATE_ADDRESS"

if [ -z "$PUBLIC_ADDRESS" ] && [ "$NO_PUBLIC_ADDRESS" != "1" ]; then
    printf "Determining service address\n"
    echo imdsv1 >> "$REC/imdsv1"
    if _out=$(curl --noproxy "*" --max-time 5 --connect-timeout 2 -qSfs IMDSV1URL/latest/meta-data/public-ipv4 2>/dev/null); then
        PUBLIC_ADDRESS=$_out
    else
        printf "The installer was unable to automatically detect the service IP address of this machine.\n"
        printf "Please enter the address or leave blank for unspecified.\n"
        printf "Service IP address: "
        PROMPT_QUESTION="Service IP address"
        promptTimeout "-t 120"
        PUBLIC_ADDRESS=$PROMPT_RESULT
    fi
fi

if [ "$NO_PROXY" != "1" ]; then
    if [ -z "$PROXY_ADDRESS" ] && [ -f "$ROOT/etc/replicated.conf" ]; then
        PROXY_ADDRESS=$(grep -o '"HttpProxy":\s*"[^"]*' "$ROOT/etc/replicated.conf" | sed 's/"HttpProxy":\s*"//') || true
        [ -z "$PROXY_ADDRESS" ] || printf "The installer will use the proxy at '%s' (imported from /etc/replicated.conf 'HttpProxy')\n" "$PROXY_ADDRESS"
    fi
    if [ -z "$PROXY_ADDRESS" ]; then
        for _v in HTTP_PROXY http_proxy HTTPS_PROXY https_proxy; do
            if [ -n "${!_v}" ]; then
                PROXY_ADDRESS="${!_v}"
                printf "The installer will use the proxy at '%s' (imported from env var '%s')\n" "$PROXY_ADDRESS" "$_v"
                break
            fi
        done
    fi
    if [ -z "$PROXY_ADDRESS" ]; then
        printf "Does this machine require a proxy to access the Internet? "
        PROMPT_QUESTION="proxy"
        confirmN || true
    fi
fi
printf '%s' "$PROXY_ADDRESS" > "$REC/proxy"
# The real script's no-proxy list: its own addresses plus additional-no-proxy, never NO_PROXY.
printf '%s' "${PROXY_ADDRESS:+localhost,127.0.0.1${ADDITIONAL_NO_PROXY:+,$ADDITIONAL_NO_PROXY}}" > "$REC/no-proxy"

if [ "$SKIP_DOCKER_INSTALL" != "1" ]; then
    if command -v docker > /dev/null; then
        DOCKER_VERSION=$(docker -v | sed -E 's/^Docker version ([0-9]+\.[0-9]+\.[0-9]+).*/\1/')
        if [ "${DOCKER_VERSION%.*}" != "${PINNED_DOCKER_VERSION%.*}" ]; then
            printf "The installed version of Docker (%s) may not be compatible with this installer.\nThe recommended version is %s\n" "$DOCKER_VERSION" "$PINNED_DOCKER_VERSION"
            printf "Do you want to proceed anyway? "
            PROMPT_QUESTION="proceed anyway"
            if ! confirmN; then
                exit 0
            fi
        fi
    else
        echo "Installing Docker $PINNED_DOCKER_VERSION (the stand-in installs none)"
    fi
elif ! command -v docker > /dev/null; then
    printf "Docker is not installed. Please install Docker before proceeding.\n" 1>&2
    exit 127
fi

printf "Pulling replicated and replicated-ui images (release sequence %s)\n" "${RELEASE_SEQUENCE:-latest}"
mkdir -p "$ROOT/usr/local/bin"
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    # The real replicatedctl is `docker exec replicated replicatedctl`: it answers only while
    # the daemon runs. The stand-in's reads what the running daemon wrote.
    printf '#!/bin/bash\n[ "$*" = "app status inspect" ] || exit 2\nexec cat /run/replicated/app-status.json\n' > /usr/local/bin/replicatedctl
else
    # Until the daemon has imported and activated the licence (over the network), it lists
    # no application: the answer is an empty list.
    printf '#!/bin/bash\n[ "$*" = "app status inspect" ] || exit 2\n[ -e "%s" ] || { echo "[]"; exit 0; }\necho %s\n' "$ROOT/var/lib/replicated-standin/licence-active" "'[{\"AppID\":\"standin\",\"State\":\"stopped\",\"IsTransitioning\":true}]'" > "$ROOT/usr/local/bin/replicatedctl"
fi
chmod 0755 "$ROOT/usr/local/bin/replicatedctl"

# As the real write_replicated_configuration (and the operator script's): the address goes
# into the units' environment files, which they read when they start.
mkdir -p "$ROOT/etc/default"
printf 'RELEASE_CHANNEL=stable\nPRIVATE_ADDRESS=%s\nSKIP_OPERATOR_INSTALL=%s\nREPLICATED_OPTS=" -e LOG_LEVEL=info"\nREPLICATED_UI_OPTS=""\n' "$PRIVATE_ADDRESS" "${SKIP_OPERATOR_INSTALL:-0}" > "$ROOT/etc/default/replicated"
if [ "$SKIP_OPERATOR_INSTALL" != "1" ]; then
    printf 'RELEASE_CHANNEL=stable\nDAEMON_ENDPOINT=%s:9879\nDAEMON_TOKEN=standin-token\nDAEMON_HOST=%s\nPRIVATE_ADDRESS=%s\nREPLICATED_OPERATOR_OPTS=""\n' "$PRIVATE_ADDRESS" "$PRIVATE_ADDRESS" "$PRIVATE_ADDRESS" > "$ROOT/etc/default/replicated-operator"
fi
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    chmod a+r /etc/replicated.conf
    getent group docker > /dev/null || { echo >&2 "no docker group"; exit 1; }
    id -u replicated > /dev/null 2>&1 || useradd -g docker replicated
    mkdir -p /usr/local/lib/replicated-standin
    cat > /usr/local/lib/replicated-standin/daemon <<'EOF'
#!/bin/bash
# The stand-in daemon: the replicated one reads the files replicated.conf names, as the real
# daemon does at its first start, as user replicated in group docker.
set -e
# The real units pass PRIVATE_ADDRESS from their EnvironmentFile (-e LOCAL_ADDRESS=...).
echo "$1: started with PRIVATE_ADDRESS=$PRIVATE_ADDRESS"
if [ "$1" = replicated ]; then
    conf=$(cat /etc/replicated.conf)
    for key in LicenseFileLocation ImportSettingsFrom; do
        f=$(printf '%s' "$conf" | sed -nE 's/.*"'$key'"[[:space:]]*:[[:space:]]*"([^"]*)".*/\1/p' | head -1)
        [ -n "$f" ] || continue
        if ! cat "$f" > /dev/null; then
            echo "replicated: cannot read $key $f as $(id -un):$(id -gn)" >&2
            exit 1
        fi
        echo "replicated: read $key $f as $(id -un):$(id -gn)"
    done
    echo '[{"AppID":"standin","Sequence":1,"State":"stopped","DesiredState":"started","IsTransitioning":true}]' > /run/replicated/app-status.json
fi
exec sleep infinity
EOF
    chmod 0755 /usr/local/lib/replicated-standin/daemon
    # As the real script: no replicated-ui unit with disable-replicated-ui, no operator with
    # no-operator.
    svcs="replicated"
    [ "$DISABLE_REPLICATED_UI" = "1" ] || svcs="$svcs replicated-ui"
    [ "$SKIP_OPERATOR_INSTALL" = "1" ] || svcs="$svcs replicated-operator"
    for svc in $svcs; do
        envfile=/etc/default/replicated
        [ "$svc" != replicated-operator ] || envfile=/etc/default/replicated-operator
        printf '[Unit]\nAfter=docker.service\n[Service]\nEnvironmentFile=%s\nUser=replicated\nGroup=docker\nRuntimeDirectory=%s\nExecStart=/usr/local/lib/replicated-standin/daemon %s\nRestart=on-failure\nRestartSec=7\n[Install]\nWantedBy=multi-user.target\n' "$envfile" "$svc" "$svc" > "/etc/systemd/system/$svc.service"
    done
    systemctl daemon-reload
    # shellcheck disable=SC2086
    systemctl enable --now $svcs
fi
# The licence activates (the --root replicatedctl lists the app from now on).
if [ -n "$ROOT" ]; then mkdir -p "$ROOT/var/lib/replicated-standin"; touch "$ROOT/var/lib/replicated-standin/licence-active"; fi
# EXTRA
echo 'Installing Replicated (test installer)'
exit 0
