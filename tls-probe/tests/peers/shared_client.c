/* A TLS client whose one SSL* is used by two worker threads, on command: either at the
 * same moment once (the misuse: a reader blocked in SSL_read while the other thread calls
 * SSL_write), or handed from one thread to the other call after call without ever
 * overlapping (a thread pool: legal). Plain libssl (the system's), a blocking socket.
 *
 *   usage   shared_client PORT         (a server on 127.0.0.1:PORT that echoes)
 *   prints  READY                      once its libraries are loaded and both workers run
 *   then one command per stdin line:
 *     connect    TCP connect, SSL_connect (blocking); prints CONNECTED <fd> <ssl pointer>
 *     overlap    worker 0 calls SSL_read and blocks in read(); once it is inside, worker 1
 *                calls SSL_write on the same SSL* (the server's echo then ends the read);
 *                prints OVERLAP <CLOCK_MONOTONIC ns just before the SSL_write>
 *     handoff N  N rounds of: one worker SSL_write, then the other SSL_read of the echo,
 *                the workers taking turns; each call begins after the previous one
 *                returned (mutex and condition variable, no I/O on the socket between);
 *                prints HANDOFF <rounds>
 *     quit       exits 0
 * Errors go to stderr with exit status 1. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { NONE, READ, WRITE, WRITE_WHILE_READING };

static SSL_CTX *ctx;
static SSL *ssl;
static int port;
static const char msg[] = "ping 0123456789abcdef0123456789abcdef\n";

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int job[2];
static int done[2];
static int reading; /* worker 0 is about to call SSL_read (under mu) */
static unsigned long long write_at;

static void fail(const char *what) {
    fprintf(stderr, "shared_client: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static unsigned long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Reads one echoed message, whole. */
static void read_echo(void) {
    char buf[sizeof msg];
    size_t got = 0;
    while (got < sizeof msg - 1) {
        int n = SSL_read(ssl, buf + got, (int)(sizeof msg - 1 - got));
        if (n <= 0)
            fail("SSL_read");
        got += (size_t)n;
    }
}

static void write_msg(void) {
    if (SSL_write(ssl, msg, (int)(sizeof msg - 1)) != (int)(sizeof msg - 1))
        fail("SSL_write");
}

static void run(int j) {
    if (j == READ) {
        pthread_mutex_lock(&mu);
        reading = 1;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        read_echo();
    } else if (j == WRITE) {
        write_msg();
    } else if (j == WRITE_WHILE_READING) {
        pthread_mutex_lock(&mu);
        while (!reading)
            pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
        /* Let the reader get from SSL_read into its blocking read(): this is the
         * workload's timing, not a test's synchronisation. */
        usleep(20000);
        write_at = mono_ns();
        write_msg();
    }
}

static void *worker(void *arg) {
    int i = (int)(long)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (job[i] == NONE)
            pthread_cond_wait(&cv, &mu);
        int j = job[i];
        pthread_mutex_unlock(&mu);
        run(j);
        pthread_mutex_lock(&mu);
        job[i] = NONE;
        done[i] = 1;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static void submit(int i, int j) {
    pthread_mutex_lock(&mu);
    done[i] = 0;
    job[i] = j;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void wait_done(int i) {
    pthread_mutex_lock(&mu);
    while (!done[i])
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void do_connect(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        fail("socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fail("connect");
    ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
        fail("SSL_new");
    if (SSL_connect(ssl) != 1)
        fail("SSL_connect");
    printf("CONNECTED %d %p\n", fd, (void *)ssl);
}

static void do_overlap(void) {
    pthread_mutex_lock(&mu);
    reading = 0;
    pthread_mutex_unlock(&mu);
    submit(0, READ);
    submit(1, WRITE_WHILE_READING);
    wait_done(1);
    wait_done(0);
    printf("OVERLAP %llu\n", write_at);
}

static void do_handoff(int rounds) {
    for (int k = 0; k < rounds; k++) {
        submit(k % 2, WRITE);
        wait_done(k % 2);
        submit((k + 1) % 2, READ);
        wait_done((k + 1) % 2);
    }
    printf("HANDOFF %d\n", rounds);
}

int main(int argc, char **argv) {
    if (argc != 2)
        fail("usage: shared_client PORT");
    port = atoi(argv[1]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        fail("SSL_CTX_new");
    pthread_t t;
    for (long i = 0; i < 2; i++)
        if (pthread_create(&t, NULL, worker, (void *)i) != 0)
            fail("pthread_create");
    printf("READY\n");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "connect", 7))
            do_connect();
        else if (!strncmp(line, "overlap", 7))
            do_overlap();
        else if (!strncmp(line, "handoff", 7))
            do_handoff(atoi(line + 8));
        else if (!strncmp(line, "quit", 4))
            break;
    }
    return 0;
}
