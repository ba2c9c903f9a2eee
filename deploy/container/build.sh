#!/bin/sh
# build.sh DOCKERFILE BINARY TAG [VERSION]: builds TAG from DOCKERFILE with a
# context staged in a temporary directory (the binary as "bin", rootfs/etc/
# from deploy/container/rootfs, an empty rootfs/data/), so that the context
# is a few megabytes whatever lies in the working tree, and no base image is
# ever pulled. Dangling images of the same kind (label io.sidecarhq.image),
# left by earlier builds of TAG, are removed.
set -eu
if [ $# -lt 3 ]; then
	echo "usage: $0 DOCKERFILE BINARY TAG [VERSION]" >&2
	exit 2
fi
dockerfile=$1 binary=$2 tag=$3 version=${4:-dev}
DOCKER=${DOCKER:-docker}
here=$(cd "$(dirname "$0")" && pwd)

if ! out=$($DOCKER version --format '{{.Server.Version}}' 2>&1); then
	echo "image: FAIL: no Docker engine answers ($DOCKER version: $(echo "$out" | tail -n 1))" >&2
	exit 1
fi
case $(file -b "$binary" 2>/dev/null || echo unknown) in
*ELF*dynamic*|*ELF*interpreter*)
	echo "image: FAIL: $binary is dynamically linked; build it with CGO_ENABLED=0" >&2
	exit 1 ;;
esac

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/data"
cp -R "$here/rootfs/etc" "$ctx/rootfs/etc"
cp "$binary" "$ctx/bin"
chmod 0755 "$ctx/bin"
chmod 0644 "$ctx/rootfs/etc/passwd" "$ctx/rootfs/etc/group"

kind=$(sed -n 's/.*io\.sidecarhq\.image="\([^"]*\)".*/\1/p' "$dockerfile")
$DOCKER build --quiet --build-arg "VERSION=$version" -f "$dockerfile" -t "$tag" "$ctx" >/dev/null
echo "image: built $tag ($($DOCKER image inspect --format '{{.Id}}' "$tag" | cut -c8-19), $version)"
if [ -n "$kind" ]; then
	$DOCKER image prune --force --filter "label=io.sidecarhq.image=$kind" >/dev/null 2>&1 || true
fi
