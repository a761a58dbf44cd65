# Sourced by the scripts beside it: `scratch_postgres [-c name=value …]` starts a
# durable PostgreSQL of its own (fsync on, shared_buffers 256 MB, the settings given) in
# a temporary directory on a free port, reachable only through its socket there, and
# stops and removes it when the script exits. It sets `bin` (the server's programs),
# `dir`, `port`, `user`, `run` (the prefix that runs a program as the server's user)
# and `psql` (a quiet psql that stops at the first error).
scratch_postgres() {
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    user=$(id -un)
    run=()
    [[ $user == root ]] && run=(runuser -u postgres --) && chown postgres "$dir" && user=postgres
    trap scratch_postgres_stop EXIT

    "${run[@]}" "$bin/initdb" -D "$dir/data" -U "$user" >/dev/null
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses='' -c shared_buffers=256MB $*" start >/dev/null
    psql=("${run[@]}" env PGOPTIONS='-c client_min_messages=warning' "$bin/psql"
        -h "$dir" -p "$port" -U "$user" -d postgres -qAtX -v ON_ERROR_STOP=1)
}

scratch_postgres_stop() {
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
