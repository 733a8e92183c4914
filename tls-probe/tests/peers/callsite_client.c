/* A TLS client whose bad calls come from functions with known names, for the call-site
 * tests (tests/callsite.rs): the test builds it with -O2 -fomit-frame-pointer (with and
 * without -g, stripped or not) and checks that tls-probe names the function that makes
 * each bad call. Plain libssl (the system's).
 *
 *   usage   callsite_client PORT       (a server on 127.0.0.1:PORT that never writes nor reads)
 *   prints  READY                      once its libraries are loaded, before any SSL call
 *   then one command per stdin line:
 *     spin     connects, then spins in pump_connection: epoll with EPOLLOUT left armed
 *              while SSL_read answers WANT_READ, until stdin has a line (that line is
 *              read as the next command); prints SPUN <SSL_read calls>
 *     retry    connects, fills the socket with SSL_write until WANT_WRITE, then
 *              resend_after_want_write retries with another buffer (OpenSSL fails it with
 *              "bad write retry"); prints RETRY <reason>, then drops the connection
 *     quit     exits 0
 * Errors go to stderr with exit status 1. The function names are what the test looks for:
 * keep them, and keep them out of line (noinline), as real code in another file would be.
 * They are global (not static) so that a build with -rdynamic exports them in .dynsym. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static SSL_CTX *ctx;
static int port;
static char a[16384], b[16384];
static char line[256];

static void fail(const char *what) {
    fprintf(stderr, "callsite_client: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static SSL *do_connect(int *fd_out, int sndbuf) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        fail("socket");
    if (sndbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fail("connect");
    SSL *ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
        fail("SSL_new");
    if (SSL_connect(ssl) != 1)
        fail("SSL_connect");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    *fd_out = fd;
    return ssl;
}

/* One turn of the bad loop: the fd is ready (EPOLLOUT is always), SSL_read wants to read.
 * Its buffer is on the stack: tls-probe copies the stack only up to it, and must still find
 * this function (the return address into it lies below the buffer). */
NOINLINE int pump_connection(SSL *ssl) {
    char buf[4096];
    int ret = SSL_read(ssl, buf, sizeof buf); /* SPIN CALL */
    if (ret > 0)
        return buf[0] != 0;
    int code = SSL_get_error(ssl, ret);
    if (code != SSL_ERROR_WANT_READ && code != SSL_ERROR_WANT_WRITE)
        fail("SSL_read");
    return 0;
}

NOINLINE void spin(void) {
    int fd;
    SSL *ssl = do_connect(&fd, 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
    struct epoll_event in = {.events = EPOLLIN, .data.fd = 0};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0 || epoll_ctl(ep, EPOLL_CTL_ADD, 0, &in) != 0)
        fail("epoll_ctl");
    unsigned long calls = 0;
    for (;;) {
        struct epoll_event got[2];
        int n = epoll_wait(ep, got, 2, 1000);
        int stop = 0;
        for (int i = 0; i < n; i++) {
            if (got[i].data.fd == 0)
                stop = 1;
            else {
                pump_connection(ssl);
                calls++;
            }
        }
        if (stop)
            break;
    }
    close(ep);
    SSL_free(ssl);
    close(fd);
    printf("SPUN %lu\n", calls);
}

/* The bug: the write that answered WANT_WRITE retried with another buffer. */
NOINLINE int resend_after_want_write(SSL *ssl) {
    int ret = SSL_write(ssl, b, sizeof b); /* RETRY CALL */
    return ret > 0 ? 0 : SSL_get_error(ssl, ret);
}

NOINLINE void retry(void) {
    int fd;
    SSL *ssl = do_connect(&fd, 4096);
    for (;;) {
        int ret = SSL_write(ssl, a, sizeof a);
        if (ret > 0)
            continue;
        if (SSL_get_error(ssl, ret) == SSL_ERROR_WANT_WRITE)
            break;
        fail("filling the socket");
    }
    resend_after_want_write(ssl);
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    printf("RETRY %d\n", ERR_GET_REASON(last));
    SSL_free(ssl);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 2)
        fail("usage: callsite_client PORT");
    port = atoi(argv[1]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        fail("SSL_CTX_new");
    printf("READY\n");
    /* Commands are read with read(2), not stdio: the spin loop watches fd 0 with epoll. */
    for (;;) {
        size_t len = 0;
        while (len + 1 < sizeof line) {
            ssize_t n = read(0, line + len, 1);
            if (n <= 0)
                return 0;
            if (line[len] == '\n')
                break;
            len++;
        }
        line[len] = 0;
        if (strcmp(line, "spin") == 0)
            spin();
        else if (strcmp(line, "retry") == 0)
            retry();
        else if (strcmp(line, "quit") == 0)
            return 0;
        else
            fail("unknown command");
    }
}
