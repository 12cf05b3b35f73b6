#!/usr/bin/env bash
# Packs this machine's Open MPI (Debian's openmpi-bin, libopenmpi3, openmpi-common, libpmix2) so that
# mpirun runs on a machine that has no MPI, such as the GPU test machine (see docs/tensor_parallel.md):
#
#   tools/bundle_mpi.sh OUT_DIR       # OUT_DIR/mpi: root/ (the packages' files under their own paths),
#                                     # deps/ (the libraries they need beyond glibc and the C++ runtime),
#                                     # env.sh (points Open MPI at root/)
#   there:  source OUT_DIR/mpi/env.sh; mpirun -np 2 ... llama_infer ...
#
# Open MPI finds its plugins, help texts and configuration through its install paths; env.sh moves each
# of them into root/ (OPAL_PREFIX and the other OPAL_* install-dir variables, PMIx's plugin path), and
# restricts the transports to one host's (shared memory, TCP), which need no network libraries.
# The programs themselves go with ../shared/device/bundle.sh as before (it takes libmpi with them).
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
command -v dpkg >/dev/null || { echo "$0: needs dpkg (Debian / Ubuntu)" >&2; exit 1; }
out=$1/mpi
rm -rf "$out"
mkdir -p "$out/root" "$out/deps"
pkgs=(openmpi-bin libopenmpi3 openmpi-common libpmix2)
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    { echo "$0: $p is not installed (tools/setup.sh installs Open MPI)" >&2; exit 1; }
  dpkg -L "$p" | grep -Ev '^/usr/share/(doc|man|lintian)/' | while read -r f; do
    if [[ -L $f || -f $f ]]; then mkdir -p "$out/root$(dirname "$f")" && cp -a "$f" "$out/root$f"; fi
  done
done
# Debian reaches mpirun through the alternatives system (/etc/alternatives/mpirun): name it directly.
ln -sf orterun "$out/root/usr/bin/mpirun"
ln -sf orterun "$out/root/usr/bin/mpiexec"
# The shared libraries of every program and plugin, except those any Linux machine (and the GPU image)
# has, and those packed already.
skip='linux-vdso|ld-linux|/libc\.so|/libm\.so|/libdl\.so|/libpthread|/librt\.so|/libgcc_s|/libstdc\+\+|/libz\.so|cuda|libcu|libnccl|libnv'
find "$out/root" -type f \( -name '*.so*' -o -perm -u+x \) | while read -r f; do
  file -b "$f" | grep -q ELF || continue
  ldd "$f" 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $3}' | { grep -Ev "$skip" || true; } | while read -r lib; do
    [[ -e $out/root$(realpath "$lib") || -e $out/deps/$(basename "$lib") ]] || cp -L "$lib" "$out/deps/"
  done
done
cat > "$out/env.sh" <<'EOF'
# Source this: Open MPI from this folder (tools/bundle_mpi.sh).
_mpi_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_r=$_mpi_here/root
export OPAL_PREFIX=$_r/usr OPAL_EXEC_PREFIX=$_r/usr OPAL_BINDIR=$_r/usr/bin OPAL_SBINDIR=$_r/usr/sbin
export OPAL_LIBEXECDIR=$_r/usr/libexec OPAL_DATAROOTDIR=$_r/usr/share OPAL_DATADIR=$_r/usr/share
export OPAL_SYSCONFDIR=$_r/etc/openmpi OPAL_LIBDIR=$_r/usr/lib/x86_64-linux-gnu/openmpi/lib
export OPAL_INCLUDEDIR=$_r/usr/lib/x86_64-linux-gnu/openmpi/include
export OPAL_PKGDATADIR=$_r/usr/share/openmpi OPAL_PKGLIBDIR=$_r/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3
export PMIX_INSTALL_PREFIX=$_r/usr PMIX_MCA_mca_base_component_path=$_r/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix
export PATH=$_r/usr/bin:$PATH
export LD_LIBRARY_PATH=$_r/usr/lib/x86_64-linux-gnu:$_r/usr/lib/x86_64-linux-gnu/openmpi/lib:$_mpi_here/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# One host: shared memory between the processes (NCCL carries the GPUs' traffic itself).
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp OMPI_MCA_osc=^ucx OMPI_MCA_mtl=^ofi
unset _mpi_here _r
EOF
du -sh "$out" | awk '{print "bundle: " $1 " in " $2}'
