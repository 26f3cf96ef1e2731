#!/usr/bin/env bash
# Image build step: makes the container an MPI node reachable over ssh, for root or a non-root user.
#  - sshd listens on $SBN_SSH_PORT (2222: a non-root sshd cannot bind 22), public-key login only,
#    its host key owned by $SBN_USER (so the same config serves a root and a non-root sshd), no PAM
#    (a non-root sshd cannot use it), StrictModes off (Kubernetes mounts keys with its own modes).
#  - the ssh client defaults to the same port and skips host-key checks: nodes of one job are
#    created together and their host keys are new each time.
#  - SBN_SSH_KEYS=image: a key pair for $SBN_USER is generated into the image and authorised, so
#    every container of this image can reach every other one (compose, the container test). The key
#    is then in every copy of the image: keep such images private, or build with SBN_SSH_KEYS=none
#    and mount keys at run time (the Kubernetes MPI operator mounts its own at sshAuthMountPath).
set -euo pipefail

: "${SBN_USER:=root}"
: "${SBN_UID:=1000}"
: "${SBN_SSH_PORT:=2222}"
: "${SBN_SSH_KEYS:=image}"

if [ "$SBN_USER" != root ] && ! id "$SBN_USER" >/dev/null 2>&1; then
  echo "# ssh-setup: useradd --create-home --uid $SBN_UID --shell /bin/bash $SBN_USER"
  useradd --create-home --uid "$SBN_UID" --shell /bin/bash "$SBN_USER"
fi
# sshd refuses a locked account ('!' in shadow) even for key logins when PAM is off; '*' is no password.
usermod -p '*' "$SBN_USER"
home=$(getent passwd "$SBN_USER" | cut -d: -f6)
group=$(id -gn "$SBN_USER")

install -d -m 0755 /etc/ssh/syncbn /run/sshd
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
ssh-keygen -q -t ed25519 -N '' -C "syncbn-host" -f /etc/ssh/syncbn/ssh_host_ed25519_key
chown "$SBN_USER:$group" /etc/ssh/syncbn/ssh_host_ed25519_key /etc/ssh/syncbn/ssh_host_ed25519_key.pub

# Debian's and Ubuntu's sshd_config and ssh_config include their .d/ directories first, and the first
# value read wins, so these files override the defaults.
cat >/etc/ssh/sshd_config.d/syncbn.conf <<EOF
# syncbn MPI node (docker/ssh-setup.sh)
Port $SBN_SSH_PORT
HostKey /etc/ssh/syncbn/ssh_host_ed25519_key
PidFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
EOF
cat >/etc/ssh/ssh_config.d/syncbn.conf <<EOF
# syncbn MPI node (docker/ssh-setup.sh)
Host *
    Port $SBN_SSH_PORT
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    BatchMode yes
    ConnectTimeout 10
EOF

install -d -m 0700 -o "$SBN_USER" -g "$group" "$home/.ssh"
case "$SBN_SSH_KEYS" in
  image)
    ssh-keygen -q -t ed25519 -N '' -C "syncbn-image-$SBN_USER" -f "$home/.ssh/id_ed25519"
    cp "$home/.ssh/id_ed25519.pub" "$home/.ssh/authorized_keys"
    chown -R "$SBN_USER:$group" "$home/.ssh"
    chmod 0600 "$home/.ssh/id_ed25519" "$home/.ssh/authorized_keys"
    ;;
  none) ;;
  *) echo "error: SBN_SSH_KEYS must be 'image' or 'none', got '$SBN_SSH_KEYS'" >&2; exit 2 ;;
esac
/usr/sbin/sshd -t
echo "# ssh-setup: sshd on port $SBN_SSH_PORT for user $SBN_USER (keys: $SBN_SSH_KEYS)"
