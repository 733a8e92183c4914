/* A TLS client that misuses SSL_write once per connection, on command, as the libcurl bug
 * does: after SSL_ERROR_WANT_WRITE it retries with another buffer, OpenSSL fails the write
 * with "bad write retry", and the client drops the connection. Plain libssl (the system's).
 *
 *   usage   retry_client PORT          (a server on 127.0.0.1:PORT that never reads)
 *   prints  READY                      once its libraries are loaded, before any SSL call
 *   then one command per stdin line:
 *     connect    TCP connect, SSL_connect (blocking), then the socket goes non-blocking;
 *                prints CONNECTED <fd> <ssl pointer>
 *     retry      SSL_write 16 KiB chunks until WANT_WRITE, then SSL_write again with
 *                another buffer of the same length; prints
 *                RETRY <CLOCK_MONOTONIC ns just before the retry> <SSL_get_error> <reason>
 *                then SSL_free and close: prints DROPPED
 *     shutwrite  SSL_shutdown (close_notify sent), then SSL_write; prints
 *                SHUTWRITE <CLOCK_MONOTONIC ns just before the write> <SSL_get_error> <reason>
 *                then SSL_free and close: prints DROPPED
 *     quit       exits 0
 * Errors go to stderr with exit status 1. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static SSL_CTX *ctx;
static SSL *ssl;
static int fd = -1;
static int port;
static char a[16384], b[16384];

static void fail(const char *what) {
    fprintf(stderr, "retry_client: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static unsigned long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static void do_connect(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        fail("socket");
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fail("connect");
    ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
        fail("SSL_new");
    if (SSL_connect(ssl) != 1)
        fail("SSL_connect");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    printf("CONNECTED %d %p\n", fd, (void *)ssl);
}

static void drop(void) {
    SSL_free(ssl);
    close(fd);
    ssl = NULL;
    fd = -1;
    printf("DROPPED\n");
}

/* The reason of the error OpenSSL queued last, as a number. */
static int last_reason(void) {
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    return ERR_GET_REASON(last);
}

static void do_retry(void) {
    for (int i = 0;; i++) {
        int ret = SSL_write(ssl, a, sizeof a);
        if (ret > 0)
            continue;
        int code = SSL_get_error(ssl, ret);
        if (code == SSL_ERROR_WANT_WRITE)
            break;
        fprintf(stderr, "retry_client: SSL_write answered %d\n", code);
        fail("filling the socket");
    }
    /* The bug: the pending write retried with another buffer. */
    unsigned long long t = mono_ns();
    int ret = SSL_write(ssl, b, sizeof b);
    int code = ret > 0 ? 0 : SSL_get_error(ssl, ret);
    printf("RETRY %llu %d %d\n", t, code, last_reason());
    drop();
}

static void do_shutwrite(void) {
    SSL_shutdown(ssl);
    unsigned long long t = mono_ns();
    int ret = SSL_write(ssl, a, 100);
    int code = ret > 0 ? 0 : SSL_get_error(ssl, ret);
    printf("SHUTWRITE %llu %d %d\n", t, code, last_reason());
    drop();
}

int main(int argc, char **argv) {
    if (argc != 2)
        fail("usage: retry_client PORT");
    port = atoi(argv[1]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        fail("SSL_CTX_new");
    printf("READY\n");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "connect", 7))
            do_connect();
        else if (!strncmp(line, "retry", 5))
            do_retry();
        else if (!strncmp(line, "shutwrite", 9))
            do_shutwrite();
        else if (!strncmp(line, "quit", 4))
            break;
    }
    return 0;
}
