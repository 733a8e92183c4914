/* A TLS client that counts its own SSL calls, so a test can compare them with what tls-probe
 * saw. Plain OpenSSL >= 1.1.1 API: tests/openssl11.rs links it to a libssl.so.1.1.
 *
 *   prints  READY <OpenSSL_version()>        once its libraries are loaded, before any SSL call
 *   reads   one stdin line (any text)        then connects to 127.0.0.1:PORT, runs SSL_connect
 *   prints  CONNECTED <fd> <SSL_get_version>
 *   then, for each stdin line i:
 *     writes it (SSL_write when i is even, SSL_write_ex when odd), reads the reply up to its
 *     newline (SSL_read / SSL_read_ex likewise), prints REPLY <text>, then makes one
 *     non-blocking read that finds nothing, and asks SSL_get_error about it (WANT_READ);
 *   at the end of stdin: SSL_shutdown, SSL_free, and
 *   prints  DONE {"SSL_connect": n, "SSL_read": n, ...}   every call made, by function.
 * Errors go to stderr with exit status 1. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct {
    int connect, read, read_ex, write, write_ex, get_error, want_read;
} n;

static int get_error(SSL *ssl, int ret) {
    n.get_error++;
    int code = SSL_get_error(ssl, ret);
    if (code == SSL_ERROR_WANT_READ)
        n.want_read++;
    return code;
}

static void fail(const char *what) {
    fprintf(stderr, "counted_client: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* One read of up to len bytes, with SSL_read or SSL_read_ex; the bytes read, or <= 0 with the
 * SSL_get_error code in *code. */
static int read_once(SSL *ssl, char *buf, int len, int ex, int *code) {
    int got;
    if (ex) {
        size_t bytes = 0;
        n.read_ex++;
        int ret = SSL_read_ex(ssl, buf, (size_t)len, &bytes);
        got = ret == 1 ? (int)bytes : 0;
        if (ret != 1)
            *code = get_error(ssl, ret);
    } else {
        n.read++;
        got = SSL_read(ssl, buf, len);
        if (got <= 0)
            *code = get_error(ssl, got);
    }
    return got;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    printf("READY %s\n", OpenSSL_version(OPENSSL_VERSION));
    fflush(stdout);
    char line[256], reply[512];
    if (!fgets(line, sizeof line, stdin))
        return 0;

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        return 1;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    n.connect++;
    if (SSL_connect(ssl) != 1)
        fail("SSL_connect");
    printf("CONNECTED %d %s\n", fd, SSL_get_version(ssl));
    fflush(stdout);

    for (int i = 0; fgets(line, sizeof line, stdin); i++) {
        int ex = i % 2;
        size_t len = strlen(line), written = 0;
        if (ex) {
            n.write_ex++;
            if (SSL_write_ex(ssl, line, len, &written) != 1)
                fail("SSL_write_ex");
        } else {
            n.write++;
            if (SSL_write(ssl, line, (int)len) != (int)len)
                fail("SSL_write");
        }
        int have = 0, code = 0;
        while (have == 0 || reply[have - 1] != '\n') {
            int got = read_once(ssl, reply + have, (int)sizeof reply - 1 - have, ex, &code);
            if (got <= 0 || have + got >= (int)sizeof reply - 1) {
                fprintf(stderr, "counted_client: reading the reply: SSL_get_error %d\n", code);
                return 1;
            }
            have += got;
        }
        reply[have] = 0;
        printf("REPLY %s", reply);
        fflush(stdout);

        /* Nothing more is coming: a non-blocking read must want to read. */
        int flags = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
        if (read_once(ssl, reply, (int)sizeof reply - 1, ex, &code) > 0 ||
            code != SSL_ERROR_WANT_READ) {
            fprintf(stderr, "counted_client: the idle read did not want to read (%d)\n", code);
            return 1;
        }
        fcntl(fd, F_SETFL, flags);
    }

    SSL_shutdown(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    printf("DONE {\"SSL_connect\": %d, \"SSL_read\": %d, \"SSL_read_ex\": %d, \"SSL_write\": %d, "
           "\"SSL_write_ex\": %d, \"SSL_get_error\": %d, \"want_read\": %d}\n",
           n.connect, n.read, n.read_ex, n.write, n.write_ex, n.get_error, n.want_read);
    fflush(stdout);
    return 0;
}
