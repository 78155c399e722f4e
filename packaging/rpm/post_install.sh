# Install: enable, but do not start before the admin has looked at /etc/etcdguard/etcdguard.toml.
# Upgrade: restart only if it was running.
systemd-tmpfiles --create /usr/lib/tmpfiles.d/etcdguard.conf >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable etcdguard.service >/dev/null 2>&1 || :
    else
        systemctl try-restart etcdguard.service >/dev/null 2>&1 || :
    fi
else
    if [ "$1" -eq 1 ]; then
        systemctl enable etcdguard.service >/dev/null 2>&1 || :
    fi
fi
