"""Hand-written TensorIR schedules for conv2d + add: tiling and ping/pong pipelining."""
