// Server-side object copy for livemig: librados' copy_from, which only the
// C++ API offers in Pacific, exposed as one C function that submits the
// operation on a completion made with the C API
// (rados_aio_create_completion2). Nothing of C++ crosses into the caller:
// every exception ends here as a negative errno.
//
// Ownership: the caller owns both io-contexts and the completion, and keeps
// the destination io-context alive until the completion fires. The source
// object's name, io-context (its pool, namespace and snapshot) and version
// are encoded into the operation when it is built, so neither is needed
// once this function returns.
#include <cerrno>
#include <new>
#include <string>

#include <rados/librados.h>
#include <rados/librados.hpp>

extern "C" int livemig_rados_aio_copy_from(rados_ioctx_t dst_io, const char *dst_oid, rados_ioctx_t src_io,
                                           const char *src_oid, uint32_t src_fadvise_flags, int assert_dst_exists,
                                           rados_completion_t completion) {
    if (dst_io == nullptr || dst_oid == nullptr || src_io == nullptr || src_oid == nullptr ||
        completion == nullptr) {
        return -EINVAL;
    }
    try {
        librados::IoCtx dst;
        librados::IoCtx src;
        // Each takes its own reference to the C io-context, dropped when
        // these wrappers go out of scope.
        librados::IoCtx::from_rados_ioctx_t(dst_io, dst);
        librados::IoCtx::from_rados_ioctx_t(src_io, src);
        librados::ObjectWriteOperation op;
        if (assert_dst_exists) {
            // Fails the whole operation with -ENOENT, nothing written, if
            // the destination object does not exist yet.
            op.assert_exists();
        }
        op.copy_from(src_oid, src, 0, src_fadvise_flags);
        // The C completion is the implementation a C++ AioCompletion wraps.
        // The wrapper is built in place and never destroyed: its destructor
        // would release the completion, which belongs to the caller.
        alignas(librados::AioCompletion) unsigned char storage[sizeof(librados::AioCompletion)];
        auto *wrapper =
            new (storage) librados::AioCompletion(static_cast<librados::AioCompletionImpl *>(completion));
        return dst.aio_operate(dst_oid, wrapper, &op);
    } catch (const std::bad_alloc &) {
        return -ENOMEM;
    } catch (...) {
        return -EIO;
    }
}
