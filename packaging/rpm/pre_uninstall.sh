# Removal (not upgrade): stop and disable. Snapshots in /var/lib/etcdguard stay.
if [ "$1" -eq 0 ]; then
    systemctl disable --now etcdguard.service >/dev/null 2>&1 || :
fi
