/*
 * The control API methods of a VM (docs/control-api.md), served by control.c with the
 * FerryVm as their opaque pointer.
 */
#pragma once

#include "control.h"

extern const FerryControlMethod ferry_vm_control_methods[];
