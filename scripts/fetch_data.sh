#!/usr/bin/env bash
# Fetch the real meshes used by benchmarks and reports (see ../shared/DATA.md), into
# ${DEEPSDF_DATA:-$HOME/.cache/deepsdf-data}. Debian packages are downloaded, not installed.
#   furniture/  CC0 BlendSwap furniture (sweethome3d-furniture), OBJ
#   cgal/       classic meshes incl. elephant.off and elephant-with-holes.off (libcgal-demo)
set -euo pipefail
DATA=${DEEPSDF_DATA:-$HOME/.cache/deepsdf-data}
mkdir -p "$DATA" && cd "$DATA"
if [ ! -d furniture ] || [ ! -d cgal ]; then
  apt-get update -qq
  apt-get download sweethome3d-furniture libcgal-demo
  for f in *.deb; do dpkg-deb -x "$f" ext; done
  mkdir -p furniture cgal
  (cd furniture && unzip -q -o ../ext/usr/share/sweethome3d/furniture/BlendSwap-CC-0.sh3f)
  tar -xzf ext/usr/share/doc/libcgal-dev/data.tar.gz -C cgal
  rm -rf ext ./*.deb
fi
echo "$DATA"
