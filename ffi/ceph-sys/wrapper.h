/* Headers bound by livemig-ceph-sys (Ceph Pacific 16.2, librados-dev + librbd-dev). */
#include <rados/librados.h>
#include <rbd/librbd.h>
