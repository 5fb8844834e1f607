# Sourced by the GPU scripts: puts the CUDA libraries the binary opens at run time (cuBLAS,
# NVRTC, cuRAND, cuDNN, the runtime) on LD_LIBRARY_PATH: the toolkit's, else PyTorch's wheels'.
libs=$(find /usr/local/cuda*/lib64 /opt /usr/lib/python3* /usr/local/lib/python3* \
    \( -name 'libcublas.so*' -o -name 'libnvrtc.so*' -o -name 'libcurand.so*' -o -name 'libcudart.so*' \
    -o -name 'libcudnn.so*' \) \
    2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
