#!/usr/bin/env bash
# Installs or upgrades GigaAM Transcriber on one Debian/Ubuntu server with systemd:
#   user `gigaam`, folders, a venv in /opt/gigaam with this checkout installed, /etc/gigaam settings,
#   systemd units (deploy/systemd), nginx with a Let's Encrypt certificate, the model, the first API key.
#
#   sudo deploy/install.sh --domain asr.example.com --email admin@example.com   # nginx + TLS
#   sudo deploy/install.sh --domain asr.lan --no-tls                            # nginx, plain HTTP
#   sudo deploy/install.sh                                                      # no nginx: API on 127.0.0.1:8000
#   sudo deploy/install.sh --services infer --nats-url nats://10.0.0.1:4222     # an extra GPU host
#
# Safe to run again, and that is how to upgrade (git pull, then the same command): it reinstalls the
# package, units and nginx files and restarts the services, but keeps /etc/gigaam/gigaam.env and
# /etc/gigaam/nats.conf as edited, keeps a valid certificate, and creates the first key only once.
#
#   --prefix DIR   install the files under DIR instead of /, and only print the commands that would
#                  change the running system (useradd, chown, pip, systemctl, certbot, ...): no root
#                  needed. The tests use it; it also shows what goes where.
#   --dry-run      write nothing and run nothing; print what would be done.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --domain NAME   public name for nginx (and the certificate)
  --email ADDR    Let's Encrypt account address (required with --domain unless --no-tls)
  --no-tls        nginx on plain HTTP (TLS ends elsewhere)
  --services LIST which services this host runs, comma-separated (default: all of
                  nats,registry,decode,infer,format,api,ingest); the others are disabled
  --nats-url URL  GIGAAM_NATS_URL for a new gigaam.env (default nats://127.0.0.1:4222, this host)
  --python EXE    interpreter for the venv (default python3.11; 3.11 to 3.13 are supported)
  --no-model      do not download GIGAAM_MODEL now (the infer service fetches it when it starts)
  --prefix DIR    see above
  --dry-run       see above
EOF
}

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOMAIN="" EMAIL="" TLS=1 PREFIX="" DRY_RUN=0 PYTHON=python3.11 PULL_MODEL=1
ALL_SERVICES=(nats registry decode infer format api ingest)
SERVICES_ARG="" NATS_URL=nats://127.0.0.1:4222

while [[ $# -gt 0 ]]; do
    case "$1" in
        --domain) DOMAIN="${2:?--domain needs a name}"; shift 2 ;;
        --email) EMAIL="${2:?--email needs an address}"; shift 2 ;;
        --no-tls) TLS=0; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --no-model) PULL_MODEL=0; shift ;;
        --services) SERVICES_ARG="${2:?--services needs a list}"; shift 2 ;;
        --nats-url) NATS_URL="${2:?--nats-url needs a URL}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "install.sh: $*" >&2; exit 1; }

if [[ -n "$DOMAIN" && "$TLS" == 1 && -z "$EMAIL" ]]; then
    die "--domain with TLS needs --email (the Let's Encrypt account), or pass --no-tls"
fi
SERVICES=()
if [[ -n "$SERVICES_ARG" ]]; then
    IFS=, read -r -a SERVICES <<<"$SERVICES_ARG"
    for s in "${SERVICES[@]}"; do
        [[ " ${ALL_SERVICES[*]} " == *" $s "* ]] || die "--services: unknown service $s (choose from ${ALL_SERVICES[*]})"
    done
else
    SERVICES=("${ALL_SERVICES[@]}")
fi
runs() { [[ " ${SERVICES[*]} " == *" $1 "* ]]; }
if [[ -n "$DOMAIN" ]] && ! runs api; then
    die "--domain: nginx fronts the API, and this host does not run it (--services)"
fi
if [[ -n "$DOMAIN" && ! "$DOMAIN" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    die "--domain $DOMAIN is not a host name"
fi

# ROOT: where files go. WRITE: files are written. SYSTEM: commands that change the machine run.
ROOT=""
WRITE=1
SYSTEM=1
if [[ -n "$PREFIX" ]]; then
    ROOT="$(realpath -m "$PREFIX")"
    SYSTEM=0
fi
if [[ "$DRY_RUN" == 1 ]]; then
    WRITE=0
    SYSTEM=0
fi
if [[ "$SYSTEM" == 1 && "$EUID" -ne 0 ]]; then
    die "run as root (sudo), or use --prefix DIR / --dry-run to see what it would do"
fi

# Where things live on the target machine (the units and gigaam.env name the same paths).
USER_NAME=gigaam
OPT=/opt/gigaam
VENV=$OPT/venv
ETC=/etc/gigaam
ENV_FILE=$ETC/gigaam.env
DATA=/var/lib/gigaam
MODELS=/var/cache/gigaam/models
SRV=/srv/gigaam
UNIT_DIR=/etc/systemd/system
ACME_ROOT=/var/www/certbot
FIRST_KEY_MARK=$DATA/.first-key-created

say() { printf '==> %s\n' "$*"; }

# run CMD...: run it (traced on stderr), or only show it when SYSTEM=0.
run() {
    if [[ "$SYSTEM" == 1 ]]; then
        printf '+ %s\n' "$*" >&2
        "$@"
    else
        printf 'would run: %s\n' "$*"
    fi
}

# ensure_dir PATH MODE OWNER: exists with that mode and owner (owner applied on the real system only).
ensure_dir() {
    local path="$ROOT$1" mode="$2" owner="$3"
    if [[ -d "$path" ]]; then
        :
    elif [[ "$WRITE" == 1 ]]; then
        mkdir -p "$path"
        echo "created $1"
    else
        echo "would create $1"
    fi
    [[ "$WRITE" == 1 ]] && chmod "$mode" "$path"
    if [[ "$SYSTEM" == 1 ]]; then
        chown "$owner" "$path"
    fi
    return 0
}

# put CONTENT_FILE DEST MODE OWNER [once]: install a file when its content differs ("once": only
# when it does not exist yet, for files the operator edits). Sets CHANGED=1 when it wrote.
CHANGED=0
put() {
    local src="$1" dest="$ROOT$2" mode="$3" owner="$4" once="${5:-}"
    if [[ -e "$dest" && "$once" == once ]]; then
        echo "kept $2 (never overwritten: new settings are documented in docs/)"
    elif [[ -e "$dest" ]] && cmp -s "$src" "$dest"; then
        echo "unchanged $2"
    elif [[ "$WRITE" == 1 ]]; then
        mkdir -p "$(dirname "$dest")"
        install -m "$mode" "$src" "$dest"
        echo "installed $2"
        CHANGED=1
    else
        echo "would install $2"
        CHANGED=1
    fi
    if [[ "$SYSTEM" == 1 && -e "$dest" ]]; then
        chown "$owner" "$dest"
    fi
    return 0
}

# link TARGET LINK: a symlink LINK -> TARGET (TARGET as seen on the target machine).
link() {
    local target="$1" path="$ROOT$2"
    if [[ -L "$path" && "$(readlink "$path")" == "$target" ]]; then
        echo "unchanged $2"
    elif [[ "$WRITE" == 1 ]]; then
        mkdir -p "$(dirname "$path")"
        ln -sfn "$target" "$path"
        echo "linked $2 -> $target"
        CHANGED=1
    else
        echo "would link $2 -> $target"
        CHANGED=1
    fi
}

# render SRC: a temp copy of SRC with the placeholders filled in.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
render() {
    local out
    out="$TMP/$(basename "$1")"
    sed -e "s|__DOMAIN__|${DOMAIN:-_}|g" \
        -e "s|@PUBLIC_URL@|${PUBLIC_URL}|g" \
        -e "s|^GIGAAM_NATS_URL=.*|GIGAAM_NATS_URL=${NATS_URL}|" \
        -e "s|server 127.0.0.1:8000;|server 127.0.0.1:${API_PORT};|" "$1" >"$out"
    echo "$out"
}

# env_value KEY: KEY from the installed gigaam.env, else from the template.
env_value() {
    local file="$ROOT$ENV_FILE"
    [[ -f "$file" ]] || file="$SRC/deploy/gigaam.env"
    sed -n "s/^$1=//p" "$file" | tail -n 1 | tr -d '"'"'"
}

# gigaam_cli ARGS...: the CLI as user gigaam with exactly the services' environment file.
gigaam_cli() {
    run systemd-run --quiet --wait --pipe --collect --uid="$USER_NAME" --gid="$USER_NAME" \
        -p EnvironmentFile="$ENV_FILE" -p WorkingDirectory="$DATA" "$VENV/bin/gigaam-transcriber" "$@"
}

API_PORT=8000  # until gigaam.env is read below
if [[ -n "$DOMAIN" ]]; then
    PUBLIC_URL="$([[ "$TLS" == 1 ]] && echo https || echo http)://$DOMAIN"
else
    PUBLIC_URL=""
fi

# -- 1. packages ------------------------------------------------------------------------------
say "packages"
packages=()
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    [[ "$PYTHON" == python3.11 ]] || die "$PYTHON not found"
    packages+=(python3.11)
fi
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=("$(basename "$PYTHON")-venv")
fi
[[ -n "$DOMAIN" ]] && ! command -v nginx >/dev/null 2>&1 && packages+=(nginx)
[[ -n "$DOMAIN" && "$TLS" == 1 ]] && ! command -v certbot >/dev/null 2>&1 && packages+=(certbot)
if [[ ${#packages[@]} -gt 0 ]]; then
    command -v apt-get >/dev/null 2>&1 || die "install these first: ${packages[*]}"
    run apt-get update -q
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
else
    echo "nothing to install"
fi
if [[ "$SYSTEM" == 1 ]]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$PYTHON is not Python 3.11 (the package requires 3.11); pass --python"
fi

# -- 2. user and folders ----------------------------------------------------------------------
say "user $USER_NAME and folders"
if id -u "$USER_NAME" >/dev/null 2>&1; then
    echo "user $USER_NAME exists"
else
    # A system account that cannot log in; its home is the data dir (torch and pip caches land there).
    run useradd --system --user-group --home-dir "$DATA" --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
fi
ensure_dir "$OPT" 0755 root:root
ensure_dir "$ETC" 0750 "root:$USER_NAME"              # settings: readable by the services only
ensure_dir "$DATA" 0750 "$USER_NAME:$USER_NAME"        # GIGAAM_DATA_DIR: registry, ingest ledger, scratch
ensure_dir "$DATA/nats" 0750 "$USER_NAME:$USER_NAME"   # JetStream store (nats.conf)
ensure_dir /var/cache/gigaam 0750 "$USER_NAME:$USER_NAME"
ensure_dir "$MODELS" 0750 "$USER_NAME:$USER_NAME"      # GIGAAM_MODEL_DIR: re-downloadable, no backup
# Shared folders: setgid so files dropped by group members (e.g. a syncthing user added to group
# gigaam) stay in the group, and the services can move them.
ensure_dir "$SRV" 2770 "$USER_NAME:$USER_NAME"
for sub in inbox processed failed output; do
    ensure_dir "$SRV/$sub" 2770 "$USER_NAME:$USER_NAME"
done

# -- 3. the package ---------------------------------------------------------------------------
say "package from $SRC into $VENV"
if [[ -x "$ROOT$VENV/bin/python" ]]; then
    echo "venv exists"
else
    run "$PYTHON" -m venv "$VENV"
fi
# Not editable: the checkout can move or change without touching the running services. Only the
# project itself is reinstalled; dependencies move only to the exact versions of constraints.txt.
run "$VENV/bin/pip" install --quiet --upgrade --upgrade-strategy only-if-needed -c "$SRC/constraints.txt" "$SRC"
put "$SRC/deploy/healthcheck.py" "$OPT/healthcheck.py" 0755 root:root

# -- 4. settings ------------------------------------------------------------------------------
say "settings in $ETC"
put "$(render "$SRC/deploy/gigaam.env")" "$ENV_FILE" 0640 "root:$USER_NAME" once
put "$SRC/deploy/nats/nats.conf" "$ETC/nats.conf" 0640 "root:$USER_NAME" once
API_PORT="$(env_value GIGAAM_API_PORT)"
API_PORT="${API_PORT:-8000}"

# -- 5. systemd units -------------------------------------------------------------------------
say "systemd units"
CHANGED=0
for unit in "$SRC"/deploy/systemd/gigaam*.service "$SRC"/deploy/systemd/gigaam.target; do
    put "$unit" "$UNIT_DIR/$(basename "$unit")" 0644 root:root
done
[[ "$CHANGED" == 1 ]] && run systemctl daemon-reload
# Enabling a unit (WantedBy=gigaam.target) is what makes this host run it.
enable=() disable=()
for s in "${ALL_SERVICES[@]}"; do
    if runs "$s"; then enable+=("gigaam-$s.service"); else disable+=("gigaam-$s.service"); fi
done
run systemctl enable --quiet gigaam.target "${enable[@]}"
[[ ${#disable[@]} -gt 0 ]] && run systemctl disable --now --quiet "${disable[@]}"

# -- 6. model ---------------------------------------------------------------------------------
MODEL="$(env_value GIGAAM_MODEL)"
if runs infer && [[ "$PULL_MODEL" == 1 && -n "$MODEL" && "$MODEL" != */* ]]; then
    say "model $MODEL into $MODELS (MD5-checked; skipped when already there)"
    gigaam_cli models pull "$MODEL"
fi

# -- 7. the broker, the first API key (once), then everything ---------------------------------
# The key is made while only the broker runs, and shown once, at the very end of this script.
say "broker"
runs nats && run systemctl start gigaam-nats.service
NATS_NOW="$(env_value GIGAAM_NATS_URL)"
run "$VENV/bin/python" "$OPT/healthcheck.py" nats --url "${NATS_NOW:-$NATS_URL}" --wait 60
FIRST_KEY=""
if runs api; then
    say "first API key"
    if [[ -e "$ROOT$FIRST_KEY_MARK" ]]; then
        echo "made on an earlier run (more: gigaam-transcriber keys create NAME; see docs/operations.md)"
    elif [[ "$SYSTEM" == 1 ]]; then
        FIRST_KEY="$(gigaam_cli keys create admin)"  # the secret alone on stdout
        touch "$ROOT$FIRST_KEY_MARK"
        chown "$USER_NAME:$USER_NAME" "$ROOT$FIRST_KEY_MARK"
    else
        gigaam_cli keys create admin
        run touch "$FIRST_KEY_MARK"
    fi
fi

say "services"
# restart, not start: an upgrade must replace the running code.
run systemctl restart gigaam.target

# -- 8. nginx and TLS -------------------------------------------------------------------------
if [[ -n "$DOMAIN" ]]; then
    say "nginx for $DOMAIN"
    put "$SRC/deploy/nginx/gigaam-proxy.conf" /etc/nginx/snippets/gigaam-proxy.conf 0644 root:root
    cert="/etc/letsencrypt/live/$DOMAIN/fullchain.pem"
    if [[ "$TLS" == 1 ]]; then
        ensure_dir "$ACME_ROOT" 0755 root:root
        if [[ ! -f "$ROOT$cert" && "$SYSTEM" == 0 ]]; then
            echo "would serve the ACME challenge with gigaam-http.conf until the certificate exists"
        elif [[ ! -f "$ROOT$cert" ]]; then
            # No certificate yet: serve the challenge over plain HTTP first, then ask for one.
            put "$(render "$SRC/deploy/nginx/gigaam-http.conf")" /etc/nginx/sites-available/gigaam 0644 root:root
            link /etc/nginx/sites-available/gigaam /etc/nginx/sites-enabled/gigaam
            run nginx -t -q
            run systemctl enable --now nginx
            run systemctl reload nginx
        fi
        # Webroot, not the nginx plugin: certbot never edits our site. --keep-until-expiring makes a
        # re-run a no-op; the deploy hook (saved in the renewal config) reloads nginx after renewals.
        run certbot certonly --webroot -w "$ACME_ROOT" -d "$DOMAIN" -m "$EMAIL" --agree-tos \
            --non-interactive --keep-until-expiring --deploy-hook "systemctl reload nginx"
        put "$(render "$SRC/deploy/nginx/gigaam.conf")" /etc/nginx/sites-available/gigaam 0644 root:root
    else
        put "$(render "$SRC/deploy/nginx/gigaam-http.conf")" /etc/nginx/sites-available/gigaam 0644 root:root
    fi
    link /etc/nginx/sites-available/gigaam /etc/nginx/sites-enabled/gigaam
    run nginx -t -q
    run systemctl enable --now nginx
    run systemctl reload nginx
elif runs api; then
    say "no --domain: nginx not configured; the API listens on 127.0.0.1:$API_PORT"
fi

say "done: ${SERVICES[*]}${PUBLIC_URL:+ at $PUBLIC_URL}  (status: systemctl status 'gigaam-*'; logs: journalctl -u 'gigaam-*' -f)"
if [[ -n "$FIRST_KEY" ]]; then
    printf '\n  The first API key ("admin"), shown only now and stored only as a hash. Keep it safe:\n\n'
    printf '    %s\n\n' "$FIRST_KEY"
fi
