#pragma once
// The umbrella header: everything in docs/api.md.
#include <defer/await.hpp>
#include <defer/device.hpp>
#include <defer/errors.hpp>
#include <defer/memory.hpp>
#include <defer/mode.hpp>
#include <defer/ops.hpp>
#include <defer/options.hpp>
#include <defer/stats.hpp>
#include <defer/stream.hpp>
#include <defer/tensor.hpp>
