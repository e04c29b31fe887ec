"""Running the npu2 designs on this machine: the kernels compiled for the host
(host_kernels) and the dataflow model that drives them."""
