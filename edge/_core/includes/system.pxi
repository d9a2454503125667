# C declarations of the system calls the reactor uses. Kept apart from the logic so the
# .pyx files read as the reactor, not as a list of headers.

from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t, int32_t
from libc.string cimport memcpy, memmove, memcmp, memchr, memset, strlen
from libc.stdlib cimport malloc, realloc, free, qsort
from cpython.object cimport PyObject
from libc.errno cimport errno, EAGAIN, EINTR, EINPROGRESS, ECONNABORTED, ECONNRESET
from libc.errno cimport ENOENT, ENOTDIR, ENAMETOOLONG, EIO
from posix.stat cimport struct_stat, stat as posix_stat, S_ISREG, S_ISDIR, S_IXUSR

cdef extern from "<sys/types.h>":
    ctypedef long ssize_t

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)
    int getpid()

cdef extern from "<sys/types.h>" nogil:
    ctypedef long off_t

cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
    ssize_t pread(int fd, void *buf, size_t count, off_t offset)
    int unlink(const char *path)
    int dup(int fd)

cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags, int mode)
    enum:
        O_RDWR
        O_CLOEXEC
        O_TMPFILE       # an inode with no name in a directory (Linux 3.11)

cdef extern from "<stdlib.h>" nogil:
    int mkostemp(char *template, int flags)

cdef extern from "<malloc.h>" nogil:
    int malloc_trim(size_t pad)

cdef extern from "<sys/sendfile.h>" nogil:
    ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CTL_MOD
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLET
        EPOLLEXCLUSIVE

cdef extern from "<sys/socket.h>" nogil:
    ctypedef uint32_t socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    int accept4(int sockfd, sockaddr *addr, socklen_t *addrlen, int flags)
    int socket(int domain, int type, int protocol)
    int connect(int sockfd, const sockaddr *addr, socklen_t addrlen)
    int getsockopt(int sockfd, int level, int optname, void *optval, socklen_t *optlen)
    int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)
    int getsockname(int sockfd, sockaddr *addr, socklen_t *addrlen)
    int shutdown(int sockfd, int how)
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int sockfd, const msghdr *msg, int flags)
    enum:
        AF_INET
        AF_INET6
        AF_UNIX
        SOCK_STREAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_ERROR
        SO_LINGER
        SHUT_WR
        SHUT_RDWR
        MSG_PEEK
        MSG_DONTWAIT
        MSG_MORE
    struct linger:
        int l_onoff
        int l_linger

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr
    uint16_t ntohs(uint16_t)
    uint16_t htons(uint16_t)
    enum:
        IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    enum:
        CLOCK_MONOTONIC
        CLOCK_REALTIME
    struct tm:
        pass
    tm *gmtime_r(const time_t *timep, tm *result)
    tm *localtime_r(const time_t *timep, tm *result)
    void tzset()
    size_t strftime(char *s, size_t max, const char *fmt, const tm *t)

cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    int sigemptyset(sigset_t *s)
    int sigaddset(sigset_t *s, int signum)
    int sigprocmask(int how, const sigset_t *s, sigset_t *old)
    enum:
        SIG_BLOCK
        SIG_SETMASK
        SIGQUIT
        SIGTERM
        SIGINT
        SIGHUP
        SIGUSR1
        SIGUSR2
        SIGWINCH

cdef extern from "<sys/signalfd.h>" nogil:
    struct signalfd_siginfo:
        uint32_t ssi_signo
    int signalfd(int fd, const sigset_t *mask, int flags)
    enum:
        SFD_NONBLOCK
        SFD_CLOEXEC

cdef extern from "<strings.h>" nogil:
    int strncasecmp(const char *s1, const char *s2, size_t n)

cdef extern from "<stdio.h>" nogil:
    int snprintf(char *s, size_t n, const char *fmt, ...)

cdef extern from "<regex.h>" nogil:
    ctypedef struct regex_t:
        size_t re_nsub
    ctypedef int regoff_t
    ctypedef struct regmatch_t:
        regoff_t rm_so
        regoff_t rm_eo
    int regcomp(regex_t *preg, const char *regex, int cflags)
    int regexec(const regex_t *preg, const char *string, size_t nmatch, regmatch_t *pmatch, int eflags)
    size_t regerror(int errcode, const regex_t *preg, char *errbuf, size_t errbuf_size)
    void regfree(regex_t *preg)
    enum:
        REG_EXTENDED
        REG_ICASE
        REG_NOSUB
        REG_NOMATCH

cdef extern from "http_parser.h" nogil:
    struct edge_header:
        const char *name
        size_t name_len
        const char *value
        size_t value_len
    struct edge_chunked_decoder:
        pass
    int edge_parse_request(const char *buf, size_t len, const char **method, size_t *method_len,
                           const char **path, size_t *path_len, int *minor_version,
                           edge_header *headers, size_t *num_headers, size_t last_len)
    int edge_parse_response(const char *buf, size_t len, int *minor_version, int *status,
                            const char **msg, size_t *msg_len,
                            edge_header *headers, size_t *num_headers, size_t last_len)
    ssize_t edge_decode_chunked(edge_chunked_decoder *d, char *buf, size_t *bufsz)
    int64_t edge_parse_content_length(const char *s, size_t len)
    int edge_request_http_version(const char *buf, size_t len, int *major, int *minor)
