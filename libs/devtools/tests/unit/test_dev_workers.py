from lumiku_devtools.dev import workers


def test_one_worker_each_on_a_small_machine():
    assert set(workers(cores=2).values()) == {1}


def test_the_gateway_and_the_composed_services_scale_with_cores():
    assert workers(cores=16) == {"gateway": 4, "projects": 2, "avatars": 2}


def test_dev_workers_overrides():
    assert workers(cores=2, overrides='{"gateway": 3, "credits": 2}') == {
        "gateway": 3,
        "projects": 1,
        "avatars": 1,
        "credits": 2,
    }
