#include "vm_control.h"

#include "vm.h"

#include <gio/gio.h>

/* query-status: {"status": "running"|"paused", "name": str, "vcpus": n, "memory": bytes} */
static JsonNode *query_status(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "status", ferry_vm_status(vm));
    json_object_set_string_member(o, "name", vm->cfg->name);
    json_object_set_int_member(o, "vcpus", vm->nr_vcpus);
    json_object_set_int_member(o, "memory", (gint64) vm->cfg->memory);
    JsonNode *n = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    return n;
}

static JsonNode *pause_vm(void *opaque, JsonObject *params, GError **error)
{
    ferry_vm_pause(opaque);
    return NULL;
}

static JsonNode *resume_vm(void *opaque, JsonObject *params, GError **error)
{
    ferry_vm_resume(opaque);
    return NULL;
}

static JsonNode *reset_vm(void *opaque, JsonObject *params, GError **error)
{
    ferry_vm_request_reset(opaque);
    return NULL;
}

static JsonNode *quit_vm(void *opaque, JsonObject *params, GError **error)
{
    ferry_vm_request_stop(opaque);
    return NULL;
}

const FerryControlMethod ferry_vm_control_methods[] = {
    {"query-status", query_status},
    {"pause", pause_vm},
    {"resume", resume_vm},
    {"reset", reset_vm},
    {"quit", quit_vm},
    {NULL, NULL},
};
