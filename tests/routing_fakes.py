"""Stand-ins for a router and its routing event, for tests of the routing metrics."""


class FakeRouter:
    def __init__(self, name, num_experts):
        self.name, self.num_experts = name, num_experts


class FakeEvent:
    def __init__(self, router, selected, reference):
        self.router, self.num_experts = router, router.num_experts
        self.selected, self.reference_selected = selected, reference
