# Sourced: a Debian bookworm base image (Python 3.11) bootstrapped from Debian's packages with
# mmdebstrap, for hosts that cannot pull from Docker Hub. Its tag names the recipe's hash, so a
# changed recipe makes a new base and an unchanged one is reused.

BASE_PACKAGES=python3,python3-venv,ca-certificates,passwd

base_image_tag() {
  local recipe
  recipe=$(printf '%s\n' "$BASE_PACKAGES" "$(declare -f build_base_image)" | sha256sum | cut -c1-12)
  echo "localhost/attrition-base:bookworm-$recipe"
}

build_base_image() {
  local tag=$1 work
  work=$(mktemp -d)
  trap "rm -rf '$work'" RETURN
  # No docs, man pages or translations: nobody reads them in a container.
  mmdebstrap --quiet --variant=apt --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='mkdir -p "$1/etc/ssl/build"; cat "$1/etc/ssl/certs/ca-certificates.crt" /usr/local/share/ca-certificates/*.crt > "$1/etc/ssl/build/ca-bundle.pem" 2>/dev/null || true' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar" http://deb.debian.org/debian
  podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$work/rootfs.tar" "$tag" >/dev/null
}

ensure_base_image() {
  local tag
  tag=$(base_image_tag)
  if ! podman image exists "$tag"; then
    echo "bootstrapping $tag from Debian's packages (mmdebstrap)" >&2
    build_base_image "$tag"
  fi
  echo "$tag"
}
