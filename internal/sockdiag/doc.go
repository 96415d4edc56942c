// Package sockdiag lists the UDP sockets that the kernel has bound to a
// port, with the inode and owner of each, as ss -u shows them.
//
// The lists come from the kernel's sock_diag netlink interface
// (NETLINK_SOCK_DIAG, linux/inet_diag.h), which filters by port itself and
// tells whether an IPv6 socket is IPv6-only. Where the kernel offers no
// sock_diag for UDP (gVisor, kernels built without CONFIG_INET_UDP_DIAG)
// they come from /proc/net/udp and /proc/net/udp6, which every Linux
// kernel has but which lack the IPv6-only flag. Both answer for the
// network namespace of the calling thread, so that a caller that has
// locked its thread into another namespace sees that namespace's sockets.
//
// Only Linux lists its sockets this way; elsewhere the package holds only
// the Socket type. The package keeps no state and decides nothing: which
// sockets matter to whom is up to the caller.
package sockdiag
