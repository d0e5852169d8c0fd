#include "util/iothread.h"

struct FerryIoThread {
    char *name;
    GMainContext *context;
    GMainLoop *loop;
    GThread *thread;
};

static gpointer iothread_main(gpointer data)
{
    FerryIoThread *io = data;
    g_main_context_push_thread_default(io->context);
    g_main_loop_run(io->loop);
    g_main_context_pop_thread_default(io->context);
    return NULL;
}

FerryIoThread *ferry_iothread_new(const char *name, GError **error)
{
    FerryIoThread *io = g_new0(FerryIoThread, 1);
    io->name = g_strdup(name);
    io->context = g_main_context_new();
    io->loop = g_main_loop_new(io->context, FALSE);
    /* Linux thread names are at most 15 bytes; GLib truncates. */
    io->thread = g_thread_try_new(name, iothread_main, io, error);
    if (!io->thread) {
        g_prefix_error(error, "cannot start I/O thread %s: ", name);
        g_main_loop_unref(io->loop);
        g_main_context_unref(io->context);
        g_free(io->name);
        g_free(io);
        return NULL;
    }
    return io;
}

GMainContext *ferry_iothread_context(FerryIoThread *io)
{
    return io->context;
}

typedef struct {
    void (*fn)(gpointer data);
    gpointer data;
    GMutex lock;
    GCond cond;
    gboolean done;
} CallRecord;

static gboolean call_on_thread(gpointer p)
{
    CallRecord *c = p;
    c->fn(c->data);
    g_mutex_lock(&c->lock);
    c->done = TRUE;
    g_cond_signal(&c->cond);
    g_mutex_unlock(&c->lock);
    return G_SOURCE_REMOVE;
}

void ferry_iothread_call(FerryIoThread *io, void (*fn)(gpointer data), gpointer data)
{
    if (g_main_context_is_owner(io->context)) {
        fn(data);
        return;
    }
    CallRecord c = {.fn = fn, .data = data};
    g_mutex_init(&c.lock);
    g_cond_init(&c.cond);
    GSource *src = g_idle_source_new();
    g_source_set_priority(src, G_PRIORITY_HIGH);
    g_source_set_callback(src, call_on_thread, &c, NULL);
    g_source_attach(src, io->context);
    g_source_unref(src);
    g_mutex_lock(&c.lock);
    while (!c.done)
        g_cond_wait(&c.cond, &c.lock);
    g_mutex_unlock(&c.lock);
    g_mutex_clear(&c.lock);
    g_cond_clear(&c.cond);
}

static gboolean quit_loop(gpointer p)
{
    g_main_loop_quit(p);
    return G_SOURCE_REMOVE;
}

void ferry_iothread_free(FerryIoThread *io)
{
    if (!io)
        return;
    GSource *src = g_idle_source_new();
    g_source_set_callback(src, quit_loop, io->loop, NULL);
    g_source_attach(src, io->context);
    g_source_unref(src);
    g_thread_join(io->thread);
    g_main_loop_unref(io->loop);
    g_main_context_unref(io->context);
    g_free(io->name);
    g_free(io);
}
